"""Running the project: params and workspace, benchmarks, the closed loop, promotion, plots."""
