//! A Lambda binary as the tests start it: the native build by default, or
//! the deployable build for another architecture behind an emulator, as
//! `scripts/test-arm64` runs the arm64 `bootstrap` and extension under qemu.

/// The command that starts the binary named by the environment variable
/// `variable` (else `native`, the build cargo made for the test), behind the
/// emulator command in `{variable}_RUNNER` (whitespace-separated) when that
/// is set. Fails, naming `build` (the command that makes the binary), when
/// the path is not a file.
pub fn command(
    variable: &str,
    native: &str,
    build: &str,
) -> Result<tokio::process::Command, String> {
    let binary = std::env::var(variable).unwrap_or_else(|_| native.to_string());
    if !std::path::Path::new(&binary).is_file() {
        return Err(format!(
            "{variable}={binary} is not a file: build it ({build}) or unset it"
        ));
    }
    let runner = std::env::var(format!("{variable}_RUNNER")).unwrap_or_default();
    let mut runner = runner.split_whitespace();
    Ok(match runner.next() {
        None => tokio::process::Command::new(binary),
        Some(emulator) => {
            let mut command = tokio::process::Command::new(emulator);
            command.args(runner).arg(binary);
            command
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_its_variable_and_the_build() {
        let err = command(
            "AWS2AZURE_DEVSTACK_TEST_NO_SUCH_BINARY",
            "/nonexistent/bootstrap",
            "./scripts/build-lambda",
        )
        .unwrap_err();
        assert_eq!(
            err,
            "AWS2AZURE_DEVSTACK_TEST_NO_SUCH_BINARY=/nonexistent/bootstrap is not a file: \
             build it (./scripts/build-lambda) or unset it"
        );
    }

    #[test]
    fn the_native_build_runs_directly() {
        let native = std::env::current_exe().unwrap();
        let command = command(
            "AWS2AZURE_DEVSTACK_TEST_UNSET",
            native.to_str().unwrap(),
            "cargo build",
        )
        .unwrap();
        assert_eq!(command.as_std().get_program(), native.as_os_str());
        assert_eq!(command.as_std().get_args().count(), 0);
    }
}
