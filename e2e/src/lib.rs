//! End-to-end harness: a real local registry, test images built from Debian
//! packages, the real `crius` binary, a CRI client and crictl.
pub mod bench;
pub mod crius;
pub mod fixture;
pub mod guest;
pub mod kubelet;
pub mod leftovers;
pub mod nested;
pub mod network;
pub mod oci_image;
pub mod pods;
mod proxy;
pub mod registry;
pub mod stall_proxy;
pub mod test_images;
pub mod token_proxy;
