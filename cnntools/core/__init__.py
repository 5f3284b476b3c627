"""What every layer may use: errors and exit codes (`errors`, a leaf that imports nothing of
cnntools) and the run's device, precision and threads (`runtime`)."""
