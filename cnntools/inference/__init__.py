"""Running a trained model: batches through a model (`batches`), preprocessing, single-image
prediction (`images`), metrics, and the memory estimate (`memory`)."""
