"""What corolla writes and reads back: atomic files, checkpoints, training state, run folders,
grids, shipped models, and the guarded reader every file goes through."""
