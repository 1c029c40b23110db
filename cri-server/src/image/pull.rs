//! PullImage: credentials from the CRI AuthConfig, then the image store's
//! pull. The returned image_ref is the image ID, as ContainerStatus.image_id
//! will report it.

use base64::Engine as _;
use crius_proto::cri::{AuthConfig, PullImageRequest, PullImageResponse};
use image_store::{Credentials, ImageStore};

use crate::error::Error;

pub async fn pull_image(
    store: &ImageStore,
    req: PullImageRequest,
) -> Result<PullImageResponse, Error> {
    let image = super::spec_image(req.image.as_ref())?;
    let creds = credentials(req.auth.as_ref())?;
    let pulled = store.pull(image, &creds).await?;
    Ok(PullImageResponse {
        image_ref: pulled.id.to_string(),
    })
}

fn credentials(auth: Option<&AuthConfig>) -> Result<Credentials, Error> {
    let Some(a) = auth else {
        return Ok(Credentials::default());
    };
    let (mut username, mut password) = (a.username.clone(), a.password.clone());
    if username.is_empty() && !a.auth.is_empty() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|_| Error::InvalidArgument("auth.auth is not base64".to_string()))?;
        let raw = String::from_utf8(raw)
            .map_err(|_| Error::InvalidArgument("auth.auth is not UTF-8".to_string()))?;
        let (u, p) = raw
            .split_once(':')
            .ok_or_else(|| Error::InvalidArgument("auth.auth is not user:password".to_string()))?;
        username = u.to_string();
        password = p.to_string();
    }
    Ok(Credentials {
        username,
        password,
        identity_token: a.identity_token.clone(),
        registry_token: a.registry_token.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_field_is_decoded() {
        let a = AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("u:p:q"),
            ..Default::default()
        };
        let c = credentials(Some(&a)).unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p:q"));
        let bad = AuthConfig {
            auth: "!!".into(),
            ..Default::default()
        };
        assert!(credentials(Some(&bad)).is_err());
    }
}
