"""lowbit.train"""
