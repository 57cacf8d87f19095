//! The on-disk token cache, which trusts nothing it finds.
//!
//! A token read from the cache is printed as if the API had issued it, so a
//! file someone else could write is a way to hand a workload their token.
//! Before anything is read, the folder must belong to the user running the
//! command and be writable by nobody else, and the file must be a regular
//! file (not a symbolic link) of that user, readable and writable by nobody
//! else, holding an entry for exactly the endpoint, profile and AWS access
//! key asked for. The checks use the metadata of what was opened (the file
//! is opened relative to the opened folder, without following a link), so
//! nothing can be swapped in between. A cache that fails them is reported
//! and skipped: the command goes to the API.
//!
//! Writes go to a fresh temporary file with a random name (created
//! exclusively, mode 0600) renamed over the entry, so a reader never sees
//! half a file and no name can be prepared in advance.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, TokenResponse};

/// What a cached entry must be for.
pub(super) struct CacheKey<'a> {
    pub endpoint: &'a str,
    pub profile: &'a str,
    pub access_key_id: &'a str,
}

impl CacheKey<'_> {
    /// Keyed by the AWS identity too: two roles on one machine must never
    /// share a token.
    fn file_name(&self) -> String {
        let key = format!(
            "{}\n{}\n{}",
            self.endpoint, self.profile, self.access_key_id
        );
        format!(
            "{}.json",
            hex::encode(&Sha256::digest(key.as_bytes())[..16])
        )
    }
}

/// One cache file: the API's answer and what it was asked for.
#[derive(Serialize, Deserialize)]
struct Entry {
    endpoint: String,
    access_key_id: String,
    #[serde(flatten)]
    token: TokenResponse,
}

impl Entry {
    /// Which part of the request the entry was not written for. Named, not
    /// quoted: the file's text is not echoed to the terminal.
    fn mismatch(&self, key: &CacheKey<'_>) -> Option<&'static str> {
        if self.endpoint != key.endpoint {
            Some("endpoint")
        } else if self.token.profile != key.profile {
            Some("profile")
        } else if self.access_key_id != key.access_key_id {
            Some("AWS access key")
        } else {
            None
        }
    }
}

/// The cache folder, opened and found trustworthy.
pub(super) struct Folder {
    path: PathBuf,
    /// The folder as opened and checked: files are opened relative to it.
    #[cfg(unix)]
    handle: File,
}

impl Folder {
    /// Opens `path`, creating it (mode 0700) if it does not exist, and
    /// checks it. An existing folder keeps its mode (it is the user's
    /// choice, maybe their home); one others can write is refused.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(path).map_err(io_error(path))?;
        #[cfg(unix)]
        {
            let handle = File::open(path).map_err(io_error(path))?;
            let meta = handle.metadata().map_err(io_error(path))?;
            unix::check_folder(path, &meta)?;
            Ok(Self {
                path: path.to_path_buf(),
                handle,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// The token cached for `key`: `None` when there is none; an error
    /// (to report, then go to the API) when the file is not to be trusted.
    pub fn read(&self, key: &CacheKey<'_>) -> Result<Option<TokenResponse>, Error> {
        let path = self.path.join(key.file_name());
        let Some(mut file) = self.open_entry(&path)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_error(&path))?;
        let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| Error::CacheUntrusted {
            path: path.display().to_string(),
            problem: format!("is not a token cache entry ({})", where_it_breaks(&e)),
            fix: format!("rm {}", path.display()),
        })?;
        if let Some(what) = entry.mismatch(key) {
            return Err(Error::CacheUntrusted {
                path: path.display().to_string(),
                problem: format!("holds a token for another {what}"),
                fix: format!("rm {}", path.display()),
            });
        }
        Ok(Some(entry.token))
    }

    /// Stores `token` for `key`, replacing whatever was there.
    ///
    /// By path, not relative to the checked folder: should the path now
    /// lead elsewhere, what lands there is a 0600 file of this user, which
    /// nobody else can read, and reads still go through the checks.
    pub fn write(&self, key: &CacheKey<'_>, token: &TokenResponse) -> Result<(), Error> {
        let entry = Entry {
            endpoint: key.endpoint.to_string(),
            access_key_id: key.access_key_id.to_string(),
            token: token.clone(),
        };
        let name = key.file_name();
        // tempfile creates it with O_EXCL, a random name and mode 0600.
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(&self.path)
            .map_err(io_error(&self.path))?;
        let json = serde_json::to_vec(&entry).expect("a cache entry serialises");
        tmp.write_all(&json).map_err(io_error(tmp.path()))?;
        let path = self.path.join(name);
        tmp.persist(&path).map_err(|e| io_error(&path)(e.error))?;
        Ok(())
    }

    #[cfg(unix)]
    fn open_entry(&self, path: &Path) -> Result<Option<File>, Error> {
        let name = path.file_name().expect("an entry has a file name");
        unix::open_entry(&self.handle, name, path)
    }

    #[cfg(not(unix))]
    fn open_entry(&self, path: &Path) -> Result<Option<File>, Error> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(path)(e)),
            Ok(meta) if !meta.is_file() => {
                return Err(Error::CacheUntrusted {
                    path: path.display().to_string(),
                    problem: "is not a regular file".into(),
                    fix: format!("delete {}", path.display()),
                });
            }
            Ok(_) => {}
        }
        File::open(path).map(Some).map_err(io_error(path))
    }
}

/// Where a cache file stops being an entry, without quoting it: serde's
/// messages repeat the offending value, which could be a token.
fn where_it_breaks(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match error.classify() {
        Category::Syntax => "malformed JSON",
        Category::Data => "unexpected content",
        Category::Eof => "cut short",
        Category::Io => "unreadable",
    };
    format!("{what} at line {}, column {}", error.line(), error.column())
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::CacheIo {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(unix)]
mod unix {
    use std::ffi::OsStr;
    use std::fs::{File, Metadata};
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use rustix::fs::{Mode, OFlags};
    use rustix::io::Errno;

    use super::io_error;
    use crate::Error;

    fn my_uid() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    fn untrusted(path: &Path, problem: String, fix: String) -> Error {
        Error::CacheUntrusted {
            path: path.display().to_string(),
            problem,
            fix,
        }
    }

    /// The folder must be the caller's and writable by nobody else: whoever
    /// can write it can replace any entry.
    pub(super) fn check_folder(path: &Path, meta: &Metadata) -> Result<(), Error> {
        let (owner, me) = (meta.uid(), my_uid());
        if owner != me {
            return Err(untrusted(
                path,
                format!("belongs to uid {owner}, not to you (uid {me})"),
                "use a folder of your own with --cache-dir, or --no-cache".into(),
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(untrusted(
                path,
                format!(
                    "can be written by other users (mode {mode:04o}), so a token read from it \
                     could have been planted"
                ),
                format!("chmod 700 {}", path.display()),
            ));
        }
        Ok(())
    }

    /// Opens the entry `name` of the checked folder without following a
    /// link and checks what was opened.
    pub(super) fn open_entry(
        folder: &File,
        name: &OsStr,
        path: &Path,
    ) -> Result<Option<File>, Error> {
        // NONBLOCK: a FIFO put in its place must not hang the command.
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let file = match rustix::fs::openat(folder, name, flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => {
                return Err(untrusted(
                    path,
                    "is a symbolic link".into(),
                    format!("rm {}", path.display()),
                ));
            }
            Err(e) => return Err(io_error(path)(e.into())),
        };
        let meta = file.metadata().map_err(io_error(path))?;
        check_entry(path, &meta)?;
        Ok(Some(file))
    }

    /// The entry must be a regular file of the caller that nobody else can
    /// read (the token may have leaked) or write (it may be planted).
    fn check_entry(path: &Path, meta: &Metadata) -> Result<(), Error> {
        let fix = || format!("rm {}", path.display());
        if !meta.file_type().is_file() {
            return Err(untrusted(path, "is not a regular file".into(), fix()));
        }
        let (owner, me) = (meta.uid(), my_uid());
        if owner != me {
            return Err(untrusted(
                path,
                format!("belongs to uid {owner}, not to you (uid {me})"),
                fix(),
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(untrusted(
                path,
                format!("can be read or written by other users (mode {mode:04o})"),
                fix(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(profile: &str, access_token: &str) -> TokenResponse {
        TokenResponse {
            access_token: access_token.into(),
            token_type: "Bearer".into(),
            expires_in: 10,
            expires_on: 20,
            profile: profile.into(),
            scope: "s".into(),
        }
    }

    fn key<'a>(profile: &'a str) -> CacheKey<'a> {
        CacheKey {
            endpoint: "https://api.example.com/prod",
            profile,
            access_key_id: "AKIDEXAMPLE",
        }
    }

    #[test]
    fn an_entry_round_trips_in_a_private_folder_it_creates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("aws2azure");
        let folder = Folder::open(&path).unwrap();
        assert_eq!(folder.read(&key("graph")).unwrap(), None);
        let graph = token("graph", "secret");
        folder.write(&key("graph"), &graph).unwrap();
        assert_eq!(folder.read(&key("graph")).unwrap(), Some(graph.clone()));
        // Another profile or identity has its own entry.
        assert_eq!(folder.read(&key("mail")).unwrap(), None);
        let other_identity = CacheKey {
            access_key_id: "AKIDOTHER",
            ..key("graph")
        };
        assert_eq!(folder.read(&other_identity).unwrap(), None);

        let names: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [key("graph").file_name().as_str()], "no leftovers");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path.join(&names[0])), 0o600);
            assert_eq!(mode(&path), 0o700);
            assert_eq!(mode(path.parent().unwrap()), 0o700);
        }
        assert!(!format!("{graph:?}").contains("secret"));
    }

    #[test]
    fn an_entry_under_the_wrong_name_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::open(dir.path()).unwrap();
        folder.write(&key("admin"), &token("admin", "t")).unwrap();
        // The admin entry moved to where graph's belongs.
        std::fs::rename(
            dir.path().join(key("admin").file_name()),
            dir.path().join(key("graph").file_name()),
        )
        .unwrap();
        let err = folder.read(&key("graph")).unwrap_err();
        assert!(err.to_string().contains("another profile"), "{err}");

        std::fs::write(dir.path().join(key("graph").file_name()), "\x1b]0;not json").unwrap();
        let err = folder.read(&key("graph")).unwrap_err().to_string();
        assert!(err.contains("is not a token cache entry"), "{err}");
        assert!(!err.contains('\x1b'), "{err:?}");

        // serde would quote the misplaced value; the message must not.
        let entry = serde_json::json!({
            "endpoint": "https://api.example.com/prod", "access_key_id": "AKIDEXAMPLE",
            "access_token": "t", "token_type": "Bearer", "expires_in": "secret-token",
            "expires_on": 20, "profile": "graph", "scope": "s",
        });
        std::fs::write(dir.path().join(key("graph").file_name()), entry.to_string()).unwrap();
        let err = folder.read(&key("graph")).unwrap_err().to_string();
        assert!(err.contains("unexpected content at line 1"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_in_place_of_an_entry_does_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::open(dir.path()).unwrap();
        let fifo = dir.path().join(key("graph").file_name());
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = folder.read(&key("graph")).unwrap_err().to_string();
        assert!(err.contains("is not a regular file"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_folder_others_can_write_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o777, 0o770, 0o1777, 0o702] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Folder::open(dir.path()).err().unwrap().to_string();
            assert!(err.contains(&format!("mode {mode:04o}")), "{err}");
            assert!(
                err.contains(&format!("chmod 700 {}", dir.path().display())),
                "{err}"
            );
        }
        // Readable by others is fine: the entries themselves are 0600.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(Folder::open(dir.path()).is_ok());
    }
}
