"""lowbit.eval"""
