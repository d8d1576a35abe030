//! Opening images of every supported format.
