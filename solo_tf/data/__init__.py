"""Input pipeline: readers, the embedded synthetic dataset, augmentation."""
