//! RemoveImage: by ID, tag or digest reference; removes the image with all
//! its names. Removing an absent image succeeds (the CRI asks for
//! idempotence). An image a container still uses (its rootfs is an overlay
//! of the image's snapshots) is refused: removing it would delete layers
//! under a live mount.

use crius_proto::cri::{RemoveImageRequest, RemoveImageResponse};
use image_store::ImageStore;

use crate::error::Error;
use crate::store::Store;

pub async fn remove_image(
    images: &ImageStore,
    state: &Store,
    req: RemoveImageRequest,
) -> Result<RemoveImageResponse, Error> {
    let name = super::spec_image(req.image.as_ref())?;
    let Some(image) = images.get(name)? else {
        return Ok(RemoveImageResponse {});
    };
    let id = image.id.to_string();
    // Checked under the image store's lock, at the moment of removal: a
    // container being created pins the image until its record is here.
    let in_use = |image: &image_store::Image| {
        let uses = |c: &crate::store::ContainerRecord| {
            c.image_id == image.id.as_str()
                || c.config.mounts.iter().any(|m| {
                    m.image.as_ref().is_some_and(|i| {
                        i.image == image.id.as_str()
                            || images
                                .get(&i.image)
                                .ok()
                                .flatten()
                                .is_some_and(|v| v.id == image.id)
                    })
                })
        };
        state
            .containers()
            .iter()
            .find(|c| uses(c))
            .map(|c| format!("container {}: remove the container first", c.id))
    };
    images.remove(&id, in_use)?;
    Ok(RemoveImageResponse {})
}
