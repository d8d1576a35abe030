//! What `slipway inspect` shows: the SIF structure and the Apptainer metadata inside the image.

use serde::Serialize;

use super::{Image, ImageError};

/// Everything `slipway inspect` reports about an image.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The opened image.
    pub image: Image,
}

/// Inspects an opened image.
pub fn inspect(image: &Image) -> Result<Inspection, ImageError> {
    Ok(Inspection {
        image: image.clone(),
    })
}
