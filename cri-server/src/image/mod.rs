//! ImageService: one file per call; [`to_cri`] is the one conversion of a
//! stored image into the CRI's `Image`.

mod fs_info;
mod list;
mod pull;
mod remove;
mod status;

use std::sync::Arc;

use crius_proto::cri::image_service_server::ImageService;
use crius_proto::cri::{self, *};
use image_store::ImageStore;
use tonic::{Request, Response, Status};

pub struct Images {
    store: Arc<ImageStore>,
    /// Pods and containers, to refuse removing an image in use.
    state: Arc<crate::store::Store>,
}

impl Images {
    pub fn new(store: Arc<ImageStore>, state: Arc<crate::store::Store>) -> Images {
        Images { store, state }
    }
}

#[tonic::async_trait]
impl ImageService for Images {
    async fn list_images(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        Ok(Response::new(list::list_images(
            &self.store,
            req.into_inner(),
        )?))
    }

    async fn image_status(
        &self,
        req: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        Ok(Response::new(status::image_status(
            &self.store,
            req.into_inner(),
        )?))
    }

    async fn pull_image(
        &self,
        req: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        Ok(Response::new(
            pull::pull_image(&self.store, req.into_inner()).await?,
        ))
    }

    async fn remove_image(
        &self,
        req: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        Ok(Response::new(
            remove::remove_image(&self.store, &self.state, req.into_inner()).await?,
        ))
    }

    async fn image_fs_info(
        &self,
        req: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        Ok(Response::new(fs_info::image_fs_info(
            &self.store,
            req.into_inner(),
        )?))
    }
}

/// The image named by an `ImageSpec`, which must not be empty.
fn spec_image(spec: Option<&ImageSpec>) -> Result<&str, crate::error::Error> {
    match spec.map(|s| s.image.as_str()) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(crate::error::Error::InvalidArgument(
            "the image spec is empty: name an image".to_string(),
        )),
    }
}

/// A stored image as the CRI reports it.
pub fn to_cri(image: &image_store::Image) -> cri::Image {
    let user = image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .unwrap_or_default();
    let user = user.split(':').next().unwrap_or("");
    // A numeric user that does not fit a uid is reported as a name: kubelet
    // then refuses runAsNonRoot checks instead of taking it for root.
    let (uid, username) = match user.parse::<u32>() {
        Ok(n) => (
            Some(Int64Value {
                value: i64::from(n),
            }),
            String::new(),
        ),
        Err(_) => (None, user.to_string()),
    };
    cri::Image {
        id: image.id.to_string(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid,
        username,
        spec: Some(ImageSpec {
            image: image.id.to_string(),
            ..Default::default()
        }),
        pinned: false,
    }
}
