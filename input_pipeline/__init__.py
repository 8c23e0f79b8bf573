"""From hospital exports and public collections to verified, de-identified TFRecords."""
