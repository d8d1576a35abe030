//! Building SIF images (filled in by the images issue).
