//! ImageFsInfo: bytes and inodes used by snapshots and blobs, kept in the
//! image metadata as layers are unpacked (no tree walk per call).

use std::time::{SystemTime, UNIX_EPOCH};

use crius_proto::cri::{
    FilesystemIdentifier, FilesystemUsage, ImageFsInfoRequest, ImageFsInfoResponse, UInt64Value,
};
use image_store::ImageStore;

use crate::error::Error;

pub fn image_fs_info(
    store: &ImageStore,
    _: ImageFsInfoRequest,
) -> Result<ImageFsInfoResponse, Error> {
    let usage = store.usage()?;
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let fs = FilesystemUsage {
        timestamp,
        fs_id: Some(FilesystemIdentifier {
            mountpoint: store.fs_dir().display().to_string(),
        }),
        used_bytes: Some(UInt64Value { value: usage.bytes }),
        inodes_used: Some(UInt64Value {
            value: usage.inodes,
        }),
    };
    Ok(ImageFsInfoResponse {
        image_filesystems: vec![fs.clone()],
        container_filesystems: vec![fs],
    })
}
