"""lowbit.detection"""
