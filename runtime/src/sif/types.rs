//! The enumerations stored in SIF headers and descriptors.
//!
//! Values and names follow the reference implementation (sylabs/sif, `pkg/sif/sif.go` and
//! `arch.go`), so that what we print agrees with `siftool`.

use serde::Serialize;

/// Declares a SIF `i32` enumeration with its on-disk value and display name. Unknown values are
/// kept (`Unknown(raw)`), never rejected: a newer writer may add types we do not know.
macro_rules! sif_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:expr => $text:expr,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A value this version of Slipway does not know.
            Unknown(i32),
        }

        impl $name {
            /// Decodes the on-disk value.
            pub fn from_raw(raw: i32) -> Self {
                match raw {
                    $($value => Self::$variant,)*
                    other => Self::Unknown(other),
                }
            }

            /// The on-disk value.
            pub fn raw(self) -> i32 {
                match self {
                    $(Self::$variant => $value,)*
                    Self::Unknown(other) => other,
                }
            }

            /// The name `siftool` prints for this value.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                    Self::Unknown(_) => "Unknown",
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

sif_enum! {
    /// The kind of a data object.
    DataType {
        /// Definition file.
        Deffile = 0x4001 => "Def.FILE",
        /// Environment variables.
        EnvVar = 0x4002 => "Env.Vars",
        /// JSON labels.
        Labels = 0x4003 => "JSON.Labels",
        /// A file system partition.
        Partition = 0x4004 => "FS",
        /// A signature over other objects.
        Signature = 0x4005 => "Signature",
        /// Generic JSON metadata.
        GenericJson = 0x4006 => "JSON.Generic",
        /// Generic raw data.
        Generic = 0x4007 => "Generic/Raw",
        /// A cryptographic message.
        CryptoMessage = 0x4008 => "Cryptographic Message",
        /// A software bill of materials.
        Sbom = 0x4009 => "SBOM",
        /// An OCI root index.
        OciRootIndex = 0x400A => "OCI.RootIndex",
        /// An OCI blob.
        OciBlob = 0x400B => "OCI.Blob",
    }
}

sif_enum! {
    /// The file system of a partition.
    FsType {
        /// Squashfs (read-only).
        Squashfs = 1 => "Squashfs",
        /// Ext3 (deprecated).
        Ext3 = 2 => "Ext3",
        /// Immutable object archive.
        ImmuObj = 3 => "Archive",
        /// Raw data.
        Raw = 4 => "Raw",
        /// Encrypted squashfs.
        EncryptedSquashfs = 5 => "Encrypted squashfs",
    }
}

sif_enum! {
    /// The role of a partition.
    PartType {
        /// Hosts an operating system.
        System = 1 => "System",
        /// Hosts the primary operating system: the container's root.
        PrimSys = 2 => "*System",
        /// Data only.
        Data = 3 => "Data",
        /// An overlay.
        Overlay = 4 => "Overlay",
    }
}

sif_enum! {
    /// The hash used by a signature object.
    HashType {
        /// SHA-256.
        Sha256 = 1 => "SHA-256",
        /// SHA-384.
        Sha384 = 2 => "SHA-384",
        /// SHA-512.
        Sha512 = 3 => "SHA-512",
        /// BLAKE2s-256.
        Blake2s = 4 => "BLAKE2s-256",
        /// BLAKE2b-256.
        Blake2b = 5 => "BLAKE2b-256",
    }
}

sif_enum! {
    /// The format of a cryptographic message object.
    FormatType {
        /// OpenPGP.
        OpenPgp = 1 => "OpenPGP",
        /// PEM.
        Pem = 2 => "PEM",
    }
}

sif_enum! {
    /// The kind of message in a cryptographic message object.
    MessageType {
        /// OpenPGP clear signature.
        ClearSignature = 0x100 => "Clear Signature",
        /// PEM RSA-OAEP.
        RsaOaep = 0x200 => "RSA-OAEP",
    }
}

sif_enum! {
    /// The format of an SBOM object.
    SbomFormat {
        /// CycloneDX JSON.
        CycloneDxJson = 1 => "cyclonedx-json",
        /// CycloneDX XML.
        CycloneDxXml = 2 => "cyclonedx-xml",
        /// GitHub dependency snapshot JSON.
        GitHubJson = 3 => "github-json",
        /// SPDX JSON.
        SpdxJson = 4 => "spdx-json",
        /// SPDX RDF.
        SpdxRdf = 5 => "spdx-rdf",
        /// SPDX tag/value.
        SpdxTagValue = 6 => "spdx-tag-value",
        /// SPDX YAML.
        SpdxYaml = 7 => "spdx-yaml",
        /// Syft JSON.
        SyftJson = 8 => "syft-json",
    }
}

/// SIF architecture codes (the two ASCII digits stored in the header and partition extras) and
/// the Go-style names `siftool` prints for them.
const ARCHES: &[(&str, &str)] = &[
    ("01", "386"),
    ("02", "amd64"),
    ("03", "arm"),
    ("04", "arm64"),
    ("05", "ppc64"),
    ("06", "ppc64le"),
    ("07", "mips"),
    ("08", "mipsle"),
    ("09", "mips64"),
    ("10", "mips64le"),
    ("11", "s390x"),
    ("12", "riscv64"),
];

/// The architecture name (`amd64`, `386`, ...) for a SIF arch code, or `unknown`.
pub fn arch_name(code: &str) -> &'static str {
    ARCHES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, n)| *n)
        .unwrap_or("unknown")
}

/// The SIF arch code for an architecture name (`amd64`, or Rust's `x86_64`), if known.
pub fn arch_code(name: &str) -> Option<&'static str> {
    let go = match name {
        "x86_64" => "amd64",
        "x86" | "i386" | "i686" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64",
        "powerpc64le" => "ppc64le",
        other => other,
    };
    ARCHES.iter().find(|(_, n)| *n == go).map(|(c, _)| *c)
}

/// The SIF arch name of the machine this code runs on (`amd64` on x86_64).
pub fn host_arch() -> &'static str {
    arch_code(std::env::consts::ARCH)
        .map(arch_name)
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_values_round_trip() {
        assert_eq!(DataType::from_raw(0x4004), DataType::Partition);
        assert_eq!(DataType::from_raw(0x5000), DataType::Unknown(0x5000));
        assert_eq!(DataType::Unknown(0x5000).raw(), 0x5000);
        assert_eq!(PartType::PrimSys.to_string(), "*System");
    }

    #[test]
    fn arch_codes() {
        assert_eq!(arch_name("02"), "amd64");
        assert_eq!(arch_name("99"), "unknown");
        assert_eq!(arch_code("x86_64"), Some("02"));
        assert_eq!(arch_code("amd64"), Some("02"));
        assert_eq!(arch_code("vax"), None);
    }
}
