//! Files published the three ways a watcher meets a change: edited in
//! place, replaced by a rename, or swapped the way the kubelet updates a
//! mounted Secret or ConfigMap.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How a [`Mount`] publishes a new version of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// Truncate and write the file itself (an editor without backup copies).
    InPlace,
    /// Write a temporary file in the same directory and rename it over.
    Rename,
    /// The kubelet's AtomicWriter: every file of the volume goes into a new
    /// `..<timestamp>` directory, a `..data_tmp` symlink to it is renamed
    /// over `..data`, and the old version is removed. The visible files are
    /// symlinks through `..data`, created once.
    SecretSwap,
}

/// A directory of files, published one way.
pub struct Mount {
    dir: PathBuf,
    how: How,
    files: BTreeMap<String, String>,
    generation: u32,
}

impl Mount {
    /// Create `dir` and publish `files` (name, contents) in it.
    pub fn new(dir: PathBuf, how: How, files: &[(&str, &str)]) -> Mount {
        std::fs::create_dir_all(&dir).unwrap();
        let mut mount = Mount {
            dir,
            how,
            files: files
                .iter()
                .map(|(name, text)| (name.to_string(), text.to_string()))
                .collect(),
            generation: 0,
        };
        match how {
            How::InPlace | How::Rename => {
                for (name, text) in &mount.files {
                    std::fs::write(mount.dir.join(name), text).unwrap();
                }
            }
            How::SecretSwap => {
                mount.swap();
                for name in mount.files.keys() {
                    std::os::unix::fs::symlink(
                        Path::new("..data").join(name),
                        mount.dir.join(name),
                    )
                    .unwrap();
                }
            }
        }
        mount
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where readers find `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Publish new `contents` for `name` (an existing file of the mount).
    pub fn publish(&mut self, name: &str, contents: &str) {
        assert!(self.files.contains_key(name), "{name} is not in the mount");
        self.files.insert(name.to_owned(), contents.to_owned());
        match self.how {
            How::InPlace => std::fs::write(self.path(name), contents).unwrap(),
            How::Rename => {
                let temp = self.dir.join(format!(".{name}.tmp"));
                std::fs::write(&temp, contents).unwrap();
                std::fs::rename(&temp, self.path(name)).unwrap();
            }
            How::SecretSwap => self.swap(),
        }
    }

    /// One AtomicWriter update with every file of the mount.
    fn swap(&mut self) {
        let previous = (self.generation > 0).then(|| self.version());
        self.generation += 1;
        let version = self.version();
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        for (name, text) in &self.files {
            std::fs::write(self.dir.join(&version).join(name), text).unwrap();
        }
        let staging = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &staging).unwrap();
        std::fs::rename(&staging, self.dir.join("..data")).unwrap();
        if let Some(previous) = previous {
            std::fs::remove_dir_all(self.dir.join(previous)).unwrap();
        }
    }

    /// The timestamped directory name of the current generation.
    fn version(&self) -> String {
        format!(
            "..2026_12_06_10_20_{:02}.{}",
            self.generation,
            100 + self.generation
        )
    }
}
