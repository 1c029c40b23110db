//! CRI fields newer than our bindings. k8s-cri 0.11 predates
//! `Mount.image_sub_path` and `ImageSpec.image_ref`, which image volumes
//! need: a tower layer ([`CriExtLayer`]) reads the first from
//! CreateContainer requests into the request's extensions
//! ([`MountSubPaths`]), and writes the second into ContainerStatus answers
//! from the answer's extensions ([`MountImageRefs`]), by field number on the
//! wire. Every other call, and everything else in these two, passes as it
//! came.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes};
use crius_proto::cri::ContainerStatusResponse;
use http_body_util::BodyExt as _;
use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint};
use tonic::body::Body;
use tonic::codegen::http;

const CREATE_CONTAINER: &str = "/runtime.v1.RuntimeService/CreateContainer";
const CONTAINER_STATUS: &str = "/runtime.v1.RuntimeService/ContainerStatus";

/// The largest request or answer body the layer buffers (tonic's own
/// decoding limit is 4 MiB).
const MAX_BODY: usize = 16 << 20;

// Field numbers of CRI v1 (runtime.v1 api.proto).
/// `ContainerStatusResponse.status`
const STATUS: u32 = 1;
/// `ContainerStatus.mounts`
const STATUS_MOUNTS: u32 = 14;
/// `Mount.image`
const MOUNT_IMAGE: u32 = 9;
/// `ImageSpec.image_ref`
const IMAGE_REF: u32 = 20;

/// The `image_sub_path` of each mount of a CreateContainer request, in the
/// order of `config.mounts`; None when the request could not be read for
/// them (a compressed message).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MountSubPaths(pub Option<Vec<String>>);

/// The image ID behind each mount of a ContainerStatus answer, in the order
/// of `status.mounts` (None: not an image volume), for `ImageSpec.image_ref`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MountImageRefs(pub Vec<Option<String>>);

/// What of `CreateContainerRequest` the layer reads: `config` (2) ->
/// `mounts` (7) -> `image_sub_path` (10).
#[derive(Clone, PartialEq, prost::Message)]
struct CreateRequestSubPaths {
    #[prost(message, optional, tag = "2")]
    config: Option<ConfigSubPaths>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ConfigSubPaths {
    #[prost(message, repeated, tag = "7")]
    mounts: Vec<MountSubPath>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MountSubPath {
    #[prost(string, tag = "10")]
    image_sub_path: String,
}

/// The sub paths of a CreateContainer request message.
fn sub_paths(message: &[u8]) -> Option<Vec<String>> {
    let req = CreateRequestSubPaths::decode(message).ok()?;
    Some(
        req.config
            .map(|c| c.mounts.into_iter().map(|m| m.image_sub_path).collect())
            .unwrap_or_default(),
    )
}

/// Appends field `tag` holding `bytes` (length-delimited) to `buf`.
fn put_field(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

/// A ContainerStatusResponse message with `image_ref` set on the image of
/// each mount `refs` names. A second occurrence of a singular message field
/// merges into the first, so the reference is appended to each such
/// mount's encoding as one more `image` holding only it; the mounts are
/// re-encoded after the rest of the status, the status after the rest of
/// the answer.
fn with_image_refs(message: &[u8], refs: &[Option<String>]) -> Option<Vec<u8>> {
    let mut resp = ContainerStatusResponse::decode(message).ok()?;
    let mut status = resp.status.take()?;
    let mounts = std::mem::take(&mut status.mounts);
    let mut status_bytes = status.encode_to_vec();
    for (i, m) in mounts.iter().enumerate() {
        let mut mount = m.encode_to_vec();
        if let (Some(Some(r)), Some(_)) = (refs.get(i), &m.image) {
            let mut image = Vec::new();
            put_field(IMAGE_REF, r.as_bytes(), &mut image);
            put_field(MOUNT_IMAGE, &image, &mut mount);
        }
        put_field(STATUS_MOUNTS, &mount, &mut status_bytes);
    }
    let mut out = resp.encode_to_vec();
    put_field(STATUS, &status_bytes, &mut out);
    Some(out)
}

/// The message of a gRPC body holding exactly one uncompressed frame.
fn single_frame(body: &[u8]) -> Option<&[u8]> {
    let mut b = body;
    if b.len() < 5 || b.get_u8() != 0 {
        return None;
    }
    let len = b.get_u32() as usize;
    (b.len() == len).then_some(b)
}

fn framed(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.into()
}

/// Adds the fields above to the calls that carry them.
#[derive(Clone, Copy, Debug, Default)]
pub struct CriExtLayer;

impl<S> tower::Layer<S> for CriExtLayer {
    type Service = CriExt<S>;
    fn layer(&self, inner: S) -> CriExt<S> {
        CriExt(inner)
    }
}

#[derive(Clone, Debug)]
pub struct CriExt<S>(S);

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for CriExt<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path();
        let (create, status) = (path == CREATE_CONTAINER, path == CONTAINER_STATUS);
        if !create && !status {
            return Box::pin(self.0.call(req));
        }
        // The service that was polled ready serves this call.
        let clone = self.0.clone();
        let mut inner = std::mem::replace(&mut self.0, clone);
        Box::pin(async move {
            let req = if create {
                match read_sub_paths(req).await {
                    Ok(req) => req,
                    Err(status) => return Ok(status.into_http()),
                }
            } else {
                req
            };
            let resp = inner.call(req).await?;
            Ok(if status {
                add_image_refs(resp).await
            } else {
                resp
            })
        })
    }
}

/// Buffers the request, puts its [`MountSubPaths`] in its extensions and
/// hands it on with the same bytes.
async fn read_sub_paths(req: http::Request<Body>) -> Result<http::Request<Body>, tonic::Status> {
    let (mut parts, body) = req.into_parts();
    let bytes = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| tonic::Status::invalid_argument(format!("reading the request: {e}")))?
        .to_bytes();
    let paths = single_frame(&bytes).and_then(sub_paths);
    parts.extensions.insert(MountSubPaths(paths));
    Ok(http::Request::from_parts(
        parts,
        Body::new(http_body_util::Full::new(bytes)),
    ))
}

/// Rewrites a ContainerStatus answer whose extensions hold
/// [`MountImageRefs`]; any other answer (errors among them) is passed on.
async fn add_image_refs(resp: http::Response<Body>) -> http::Response<Body> {
    let Some(MountImageRefs(refs)) = resp.extensions().get::<MountImageRefs>().cloned() else {
        return resp;
    };
    if refs.iter().all(Option::is_none) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let collected = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => c,
        Err(e) => {
            return tonic::Status::internal(format!("writing the answer: {e}")).into_http();
        }
    };
    let trailers = collected.trailers().cloned();
    let data = collected.to_bytes();
    let data = match single_frame(&data).and_then(|m| with_image_refs(m, &refs)) {
        Some(message) => framed(&message),
        None => data,
    };
    let mut frames = vec![Ok::<_, std::convert::Infallible>(http_body::Frame::data(
        data,
    ))];
    if let Some(t) = trailers {
        frames.push(Ok(http_body::Frame::trailers(t)));
    }
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    http::Response::from_parts(parts, Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crius_proto::cri::{
        ContainerConfig, ContainerStatus, CreateContainerRequest, ImageSpec, Mount,
    };

    /// A later CRI's view of the fields, to check the bytes from outside.
    #[derive(Clone, PartialEq, prost::Message)]
    struct NewerStatusResponse {
        #[prost(message, optional, tag = "1")]
        status: Option<NewerStatus>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct NewerStatus {
        #[prost(string, tag = "1")]
        id: String,
        #[prost(message, repeated, tag = "14")]
        mounts: Vec<NewerMount>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct NewerMount {
        #[prost(string, tag = "1")]
        container_path: String,
        #[prost(message, optional, tag = "9")]
        image: Option<NewerImageSpec>,
        #[prost(string, tag = "10")]
        image_sub_path: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct NewerImageSpec {
        #[prost(string, tag = "1")]
        image: String,
        #[prost(string, tag = "20")]
        image_ref: String,
    }

    #[test]
    fn sub_paths_are_read_in_mount_order() {
        // CreateContainerRequest { config: { mounts: [a, b] } } with the
        // newer field 10 on the second mount.
        let mut mount_b = Mount {
            container_path: "/b".into(),
            ..Default::default()
        }
        .encode_to_vec();
        put_field(10, b"sub/dir", &mut mount_b);
        let mut config = ContainerConfig::default().encode_to_vec();
        put_field(
            7,
            &Mount {
                container_path: "/a".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            &mut config,
        );
        put_field(7, &mount_b, &mut config);
        let mut msg = CreateContainerRequest {
            pod_sandbox_id: "p".into(),
            ..Default::default()
        }
        .encode_to_vec();
        put_field(2, &config, &mut msg);
        let body = framed(&msg);
        assert_eq!(
            single_frame(&body).and_then(sub_paths),
            Some(vec![String::new(), "sub/dir".into()])
        );
        // Our bindings still read the rest.
        let ours = CreateContainerRequest::decode(&msg[..]).unwrap();
        assert_eq!(ours.pod_sandbox_id, "p");
        assert_eq!(ours.config.unwrap().mounts.len(), 2);
    }

    #[test]
    fn image_refs_land_on_image_mounts_only() {
        let resp = ContainerStatusResponse {
            status: Some(ContainerStatus {
                id: "c1".into(),
                mounts: vec![
                    Mount {
                        container_path: "/host".into(),
                        host_path: "/x".into(),
                        ..Default::default()
                    },
                    Mount {
                        container_path: "/img".into(),
                        image: Some(ImageSpec {
                            image: "busybox".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            info: [("k".to_string(), "v".to_string())].into(),
        };
        let refs = vec![
            Some("sha256:not-an-image".into()),
            Some("sha256:abc".into()),
        ];
        let out = with_image_refs(&resp.encode_to_vec(), &refs).unwrap();
        // Our bindings read the same answer back.
        assert_eq!(ContainerStatusResponse::decode(&out[..]).unwrap(), resp);
        // A newer CRI sees the reference on the image mount only.
        let newer = NewerStatusResponse::decode(&out[..]).unwrap();
        let status = newer.status.unwrap();
        assert_eq!(status.id, "c1");
        assert_eq!(status.mounts[0].image, None);
        let image = status.mounts[1].image.clone().unwrap();
        assert_eq!(
            (image.image.as_str(), image.image_ref.as_str()),
            ("busybox", "sha256:abc")
        );
    }

    #[test]
    fn frames_are_checked() {
        assert_eq!(single_frame(&[0, 0, 0, 0, 2, 7, 7]), Some(&[7u8, 7][..]));
        assert_eq!(single_frame(&[1, 0, 0, 0, 2, 7, 7]), None, "compressed");
        assert_eq!(single_frame(&[0, 0, 0, 0, 3, 7, 7]), None, "short");
        assert_eq!(single_frame(&[0, 0]), None);
    }
}
