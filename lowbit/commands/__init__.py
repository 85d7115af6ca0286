"""CLI verbs, one module each; see lowbit.cli."""
