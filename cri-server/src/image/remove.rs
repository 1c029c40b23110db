//! RemoveImage: by ID, tag or digest reference; removes the image with all
//! its names. Removing an absent image succeeds (the CRI asks for
//! idempotence).

use crius_proto::cri::{RemoveImageRequest, RemoveImageResponse};
use image_store::ImageStore;

use crate::error::Error;

pub async fn remove_image(
    store: &ImageStore,
    req: RemoveImageRequest,
) -> Result<RemoveImageResponse, Error> {
    let name = super::spec_image(req.image.as_ref())?;
    store.remove(name).await?;
    Ok(RemoveImageResponse {})
}
