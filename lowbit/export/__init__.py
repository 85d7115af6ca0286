"""lowbit.export"""
