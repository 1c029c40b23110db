//! ImageStatus: the image, or no image (not an error) when absent; with
//! `verbose`, an `info` entry holding the manifest digest, chain IDs and
//! image config as JSON.

use std::collections::HashMap;

use crius_proto::cri::{ImageStatusRequest, ImageStatusResponse};
use image_store::ImageStore;

use crate::error::Error;

pub fn image_status(
    store: &ImageStore,
    req: ImageStatusRequest,
) -> Result<ImageStatusResponse, Error> {
    let name = super::spec_image(req.image.as_ref())?;
    let Some(image) = store.get(name)? else {
        return Ok(ImageStatusResponse::default());
    };
    let mut info = HashMap::new();
    if req.verbose {
        let v = serde_json::json!({
            "manifestDigest": image.manifest_digest.as_str(),
            "chainIDs": image.chain_ids.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            "snapshots": store.layer_dirs(&image),
            "imageSpec": &image.config,
        });
        info.insert("info".to_string(), v.to_string());
    }
    Ok(ImageStatusResponse {
        image: Some(super::to_cri(&image)),
        info,
    })
}
