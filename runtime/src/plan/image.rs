//! How the image is mounted: the plan's image step ([`ImageMount`]) from its format, the mode,
//! the policy (`images.kernel_mount`, `images.unpack`) and the request (`--unpack`).

use std::path::PathBuf;

use super::{ImageMount, Mode, PlanError, Request, BASE};
use crate::image::Image;
use crate::policy::{Format, LoadedPolicy, Unpack};

/// What [`mount`] decided: the mount, its rule and reason, and a refusal to record
/// (`what`, `why`, `rule`) when the request asked for something the policy forbids.
pub(super) enum Decided {
    /// The mount.
    Mount(ImageMount, String, String),
    /// The mount the launch would have used, and why it is refused.
    Refused(ImageMount, String, String, (String, String, String)),
}

/// The image's mount for a launch in `mode` by `uid`.
pub(super) fn mount(
    image: &Image,
    mode: Mode,
    req: &Request,
    policy: &LoadedPolicy,
    uid: u32,
) -> Result<Decided, PlanError> {
    let unprivileged = || "unprivileged: the kernel mounts squashfs only for root".to_string();
    Ok(match (image.format, image.squashfs) {
        (Format::Dir, _) => Decided::Mount(
            ImageMount::Directory,
            BASE.to_string(),
            "a directory image is bind-mounted read-only".to_string(),
        ),
        (_, Some(span)) if mode == Mode::Privileged => {
            let d = policy.kernel_mount(image);
            if d.allowed {
                Decided::Mount(ImageMount::KernelLoop { span }, d.rule, d.reason)
            } else {
                Decided::Mount(ImageMount::Squashfuse { span }, d.rule, d.reason)
            }
        }
        (_, Some(span)) => {
            let images = &policy.policy.images;
            match (images.unpack, req.unpack) {
                (Unpack::Always, _) | (Unpack::OnRequest, true) => Decided::Mount(
                    ImageMount::Unpacked {
                        span,
                        cache: PathBuf::from(images.unpack_dir.replace("%u", &uid.to_string())),
                    },
                    "images.unpack".to_string(),
                    if images.unpack == Unpack::Always {
                        "images.unpack is \"always\": unpacked once, then bound as a directory \
                         (no squashfuse per launch)"
                    } else {
                        "--unpack: unpacked once, then bound as a directory (no squashfuse per \
                         launch)"
                    }
                    .to_string(),
                ),
                (Unpack::Never, true) => Decided::Refused(
                    ImageMount::Squashfuse { span },
                    "images.unpack".to_string(),
                    unprivileged(),
                    (
                        "--unpack".into(),
                        "the policy does not allow unpacking images (images.unpack = \
                         \"never\"): run without --unpack"
                            .into(),
                        "images.unpack".into(),
                    ),
                ),
                _ => Decided::Mount(
                    ImageMount::Squashfuse { span },
                    BASE.to_string(),
                    unprivileged(),
                ),
            }
        }
        (f, None) => {
            return Err(PlanError::Invalid(format!(
                "image {}: {f:?} image without a squashfs",
                image.path.display()
            )))
        }
    })
}
