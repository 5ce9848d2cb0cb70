// DeiT evaluation preprocessing without third-party code: a binary PPM (P6) in,
// a normalised CHW float32 tensor out. Matches vimdeploy.data.preprocess (PIL):
// shorter side to int(size / 0.875) with PIL's antialiased bicubic (same fixed-point
// arithmetic, so the same bytes), centre crop, ImageNet mean/std.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vimdeploy
{

struct Image
{
    int width = 0;
    int height = 0;
    std::vector<uint8_t> rgb; // height * width * 3, row-major, interleaved RGB
};

// Reads a binary PPM (P6, maxval 255). Throws std::runtime_error with the reason.
Image readPpm(std::string const& path);

// PIL's Image.resize(..., BICUBIC) on an RGB image.
Image resizeBicubic(Image const& in, int outWidth, int outHeight);

// The whole transform: (3, size, size) float32, CHW.
std::vector<float> preprocess(Image const& image, int size = 224);

// Reads `count` raw little-endian float32 values (e.g. a tensor saved by numpy's tofile).
std::vector<float> readFloats(std::string const& path, size_t count);

} // namespace vimdeploy
