//! The `--device` flag: `cpu`, `cuda:N` or `auto`, checked against what this machine has.

use tch::{Cuda, Device};

/// Parses a device name and checks that the device exists here.
pub fn parse_device(name: &str) -> Result<Device, String> {
    let cuda_count = || Cuda::device_count() as usize;
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        _ => {
            let index = name
                .strip_prefix("cuda:")
                .or_else(|| (name == "cuda").then_some("0"))
                .and_then(|i| i.parse::<usize>().ok())
                .ok_or_else(|| format!("unknown device `{name}`: expected cpu, cuda:N or auto"))?;
            match cuda_count() {
                0 => Err(format!("device `{name}` requested, but libtorch sees no CUDA device on this machine")),
                n if index >= n => Err(format!("device `{name}` requested, but this machine has {n} CUDA device(s): cuda:0..cuda:{}", n - 1)),
                _ => Ok(Device::Cuda(index)),
            }
        }
    }
}

/// The name a device is reported under.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_or_explain_what_is_allowed() {
        assert_eq!(parse_device("cpu"), Ok(Device::Cpu));
        assert!(parse_device("tpu")
            .unwrap_err()
            .contains("expected cpu, cuda:N or auto"));
        assert!(parse_device("cuda:x").is_err());
        if Cuda::device_count() == 0 {
            assert!(parse_device("cuda:0")
                .unwrap_err()
                .contains("no CUDA device"));
            assert_eq!(parse_device("auto"), Ok(Device::Cpu));
        }
    }
}
