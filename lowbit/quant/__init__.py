"""lowbit.quant"""
