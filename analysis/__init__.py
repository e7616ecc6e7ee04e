"""lowbit.analysis: error metrics, sweeps, plots and reports. Not built yet:
see the project's open issues."""
