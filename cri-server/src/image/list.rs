//! ListImages: all images, or the one the filter names.

use crius_proto::cri::{ListImagesRequest, ListImagesResponse};
use image_store::ImageStore;

use crate::error::Error;

pub fn list_images(
    store: &ImageStore,
    req: ListImagesRequest,
) -> Result<ListImagesResponse, Error> {
    let wanted = req
        .filter
        .and_then(|f| f.image)
        .map(|s| s.image)
        .filter(|s| !s.is_empty());
    let images = match wanted {
        Some(name) => store.get(&name)?.into_iter().collect(),
        None => store.list()?,
    };
    Ok(ListImagesResponse {
        images: images.iter().map(super::to_cri).collect(),
    })
}
