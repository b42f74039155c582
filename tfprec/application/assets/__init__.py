"""The embedded data subset (mnist_subset.npz); data only, no code."""
