//! Image files into the pixels a model sees: decoded, converted to the experiment's channels, resized, kept as bytes in a cache.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use image::imageops::FilterType;

/// Decodes `path` into `channels` (1: luma, 3: RGB) planes of `size x size` bytes, channel
/// after channel (PyTorch's CHW order). Images of another size are resized with Lanczos3, as
/// MAML's and learn2learn's Omniglot pipelines do; a 1-bit image (Omniglot's PNGs) is read as
/// 8-bit grey first, so the filter sees real grey levels.
pub fn decode(path: &Path, size: u32, channels: u32) -> Result<Vec<u8>, String> {
    let image = image::open(path).map_err(|e| format!("cannot decode {}: {e}", path.display()))?;
    let resize = |w: u32, h: u32| w != size || h != size;
    let pixels = match channels {
        1 => {
            let mut grey = image.to_luma8();
            if resize(grey.width(), grey.height()) {
                grey = image::imageops::resize(&grey, size, size, FilterType::Lanczos3);
            }
            grey.into_raw()
        }
        3 => {
            let mut rgb = image.to_rgb8();
            if resize(rgb.width(), rgb.height()) {
                rgb = image::imageops::resize(&rgb, size, size, FilterType::Lanczos3);
            }
            // Interleaved HWC to planar CHW.
            let raw = rgb.into_raw();
            (0..3)
                .flat_map(|c| raw.iter().skip(c).step_by(3).copied())
                .collect()
        }
        other => return Err(format!("{other} channels are not supported (1 or 3)")),
    };
    Ok(pixels)
}

/// `quarter_turns` counter-clockwise rotations of `channels` square planes (`np.rot90`).
pub fn rotate(pixels: &[u8], size: usize, quarter_turns: u32) -> Vec<u8> {
    if quarter_turns.is_multiple_of(4) {
        return pixels.to_vec();
    }
    let plane = size * size;
    let mut out = vec![0u8; pixels.len()];
    for (src, dst) in pixels.chunks_exact(plane).zip(out.chunks_exact_mut(plane)) {
        for i in 0..size {
            for j in 0..size {
                let (r, c) = match quarter_turns % 4 {
                    1 => (j, size - 1 - i),
                    2 => (size - 1 - i, size - 1 - j),
                    _ => (size - 1 - j, i),
                };
                dst[i * size + j] = src[r * size + c];
            }
        }
    }
    out
}

/// Decoded images kept in memory for the life of the worker: an epoch of few-shot training
/// touches every image many times, and decoding (and resizing) dominates otherwise.
#[derive(Default)]
pub struct ImageCache {
    images: HashMap<(PathBuf, u32, u32), Rc<[u8]>>,
    bytes: usize,
}

impl ImageCache {
    pub fn shared() -> Rc<RefCell<ImageCache>> {
        Rc::new(RefCell::new(ImageCache::default()))
    }

    /// The pixels of `path` at `size` and `channels`, decoded on first use.
    pub fn get(&mut self, path: &Path, size: u32, channels: u32) -> Result<Rc<[u8]>, String> {
        let key = (path.to_path_buf(), size, channels);
        if let Some(pixels) = self.images.get(&key) {
            return Ok(pixels.clone());
        }
        let pixels: Rc<[u8]> = decode(path, size, channels)?.into();
        self.bytes += pixels.len();
        self.images.insert(key, pixels.clone());
        Ok(pixels)
    }

    /// Bytes of pixels held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarter_turns_rotate_counter_clockwise() {
        // 1 2
        // 3 4
        let square = [1u8, 2, 3, 4];
        assert_eq!(rotate(&square, 2, 1), [2, 4, 1, 3]);
        assert_eq!(rotate(&square, 2, 2), [4, 3, 2, 1]);
        assert_eq!(rotate(&square, 2, 3), [3, 1, 4, 2]);
        assert_eq!(rotate(&square, 2, 4), square);
        assert_eq!(rotate(&rotate(&square, 2, 1), 2, 3), square);
    }

    #[test]
    fn images_are_resized_and_split_into_channel_planes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        let mut rgb = image::RgbImage::new(8, 8);
        for (x, y, p) in rgb.enumerate_pixels_mut() {
            *p = image::Rgb([200, (10 * x) as u8, (10 * y) as u8]);
        }
        rgb.save(&path).unwrap();
        let planes = decode(&path, 4, 3).unwrap();
        assert_eq!(planes.len(), 3 * 16);
        assert!(planes[..16].iter().all(|&r| r == 200), "red plane first");
        let grey = decode(&path, 8, 1).unwrap();
        assert_eq!(grey.len(), 64);

        let mut cache = ImageCache::default();
        let first = cache.get(&path, 4, 3).unwrap();
        assert!(
            Rc::ptr_eq(&first, &cache.get(&path, 4, 3).unwrap()),
            "decoded once"
        );
        assert_eq!(cache.bytes(), 48);
        let err = cache
            .get(&dir.path().join("missing.png"), 4, 3)
            .unwrap_err();
        assert!(
            err.contains("cannot decode") && err.contains("missing.png"),
            "{err}"
        );
    }
}
