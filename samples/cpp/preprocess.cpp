#include "preprocess.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <stdexcept>

namespace vimdeploy
{
namespace
{

// Pillow's fixed point for 8-bit images: 32 bits - 8 (pixel) - 2 (headroom).
constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic(double x)
{
    // Pillow's bicubic_filter, a = -0.5 (Keys).
    constexpr double a = -0.5;
    x = std::fabs(x);
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0)
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
}

struct Coefficients
{
    int ksize = 0;
    std::vector<int> bounds;  // per output pixel: first input pixel, count
    std::vector<int32_t> k;   // per output pixel: ksize fixed-point weights
};

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the full input range.
Coefficients coefficients(int inSize, int outSize)
{
    double const scale = static_cast<double>(inSize) / outSize;
    double const filterscale = std::max(scale, 1.0); // antialias when shrinking
    double const support = 2.0 * filterscale;
    Coefficients c;
    c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    c.bounds.resize(outSize * 2);
    c.k.assign(static_cast<size_t>(outSize) * c.ksize, 0);
    std::vector<double> w(c.ksize);
    for (int xx = 0; xx < outSize; ++xx)
    {
        double const center = (xx + 0.5) * scale;
        int xmin = static_cast<int>(center - support + 0.5);
        xmin = std::max(xmin, 0);
        int xmax = static_cast<int>(center + support + 0.5);
        xmax = std::min(xmax, inSize) - xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; ++x)
        {
            w[x] = bicubic((x + xmin - center + 0.5) / filterscale);
            ww += w[x];
        }
        for (int x = 0; x < xmax; ++x)
        {
            double const v = ww != 0.0 ? w[x] / ww : w[x];
            double const f = v * (1 << kPrecisionBits);
            c.k[static_cast<size_t>(xx) * c.ksize + x] = static_cast<int32_t>(v < 0 ? f - 0.5 : f + 0.5);
        }
        c.bounds[xx * 2] = xmin;
        c.bounds[xx * 2 + 1] = xmax;
    }
    return c;
}

uint8_t clip8(int32_t v)
{
    v >>= kPrecisionBits;
    return static_cast<uint8_t>(std::min(255, std::max(0, v)));
}

} // namespace

Image readPpm(std::string const& path)
{
    std::ifstream f(path, std::ios::binary);
    if (!f)
        throw std::runtime_error("cannot open " + path);
    auto token = [&f]() {
        std::string t;
        char ch;
        while (f.get(ch))
        {
            if (ch == '#')
            {
                std::string comment;
                std::getline(f, comment);
            }
            else if (std::isspace(static_cast<unsigned char>(ch)))
            {
                if (!t.empty())
                    break;
            }
            else
                t += ch;
        }
        return t;
    };
    if (token() != "P6")
        throw std::runtime_error(path + " is not a binary PPM (P6); convert it, e.g. with samples/cpp/prepare.py");
    Image im;
    im.width = std::stoi(token());
    im.height = std::stoi(token());
    if (std::stoi(token()) != 255 || im.width <= 0 || im.height <= 0)
        throw std::runtime_error(path + ": only 8-bit PPM (maxval 255) is supported");
    im.rgb.resize(static_cast<size_t>(im.width) * im.height * 3);
    if (!f.read(reinterpret_cast<char*>(im.rgb.data()), static_cast<std::streamsize>(im.rgb.size())))
        throw std::runtime_error(path + ": truncated pixel data");
    return im;
}

Image resizeBicubic(Image const& in, int outWidth, int outHeight)
{
    // Separable, horizontal pass first (as Pillow), each pass rounded to 8 bits.
    Coefficients const h = coefficients(in.width, outWidth);
    Coefficients const v = coefficients(in.height, outHeight);
    Image tmp{outWidth, in.height, std::vector<uint8_t>(static_cast<size_t>(outWidth) * in.height * 3)};
    for (int y = 0; y < in.height; ++y)
        for (int xx = 0; xx < outWidth; ++xx)
            for (int ch = 0; ch < 3; ++ch)
            {
                int32_t ss = 1 << (kPrecisionBits - 1);
                for (int x = 0; x < h.bounds[xx * 2 + 1]; ++x)
                    ss += in.rgb[(static_cast<size_t>(y) * in.width + x + h.bounds[xx * 2]) * 3 + ch]
                        * h.k[static_cast<size_t>(xx) * h.ksize + x];
                tmp.rgb[(static_cast<size_t>(y) * outWidth + xx) * 3 + ch] = clip8(ss);
            }
    Image out{outWidth, outHeight, std::vector<uint8_t>(static_cast<size_t>(outWidth) * outHeight * 3)};
    for (int yy = 0; yy < outHeight; ++yy)
        for (int x = 0; x < outWidth; ++x)
            for (int ch = 0; ch < 3; ++ch)
            {
                int32_t ss = 1 << (kPrecisionBits - 1);
                for (int y = 0; y < v.bounds[yy * 2 + 1]; ++y)
                    ss += tmp.rgb[(static_cast<size_t>(y + v.bounds[yy * 2]) * outWidth + x) * 3 + ch]
                        * v.k[static_cast<size_t>(yy) * v.ksize + y];
                out.rgb[(static_cast<size_t>(yy) * outWidth + x) * 3 + ch] = clip8(ss);
            }
    return out;
}

std::vector<float> preprocess(Image const& image, int size)
{
    static float const kMean[3] = {0.485f, 0.456f, 0.406f};
    static float const kStd[3] = {0.229f, 0.224f, 0.225f};
    int const scaleSize = static_cast<int>(size / 0.875); // DeiT crop_pct: 224 -> 256
    int w = image.width, h = image.height, newW, newH;
    if (w <= h)
    {
        newW = scaleSize;
        newH = static_cast<int>(static_cast<double>(scaleSize) * h / w);
    }
    else
    {
        newW = static_cast<int>(static_cast<double>(scaleSize) * w / h);
        newH = scaleSize;
    }
    Image const resized = resizeBicubic(image, newW, newH);
    // Python's round() is round-half-to-even (58.5 -> 58): nearbyint in the default rounding mode.
    int const left = static_cast<int>(std::nearbyint((newW - size) / 2.0));
    int const top = static_cast<int>(std::nearbyint((newH - size) / 2.0));
    std::vector<float> chw(static_cast<size_t>(3) * size * size);
    for (int ch = 0; ch < 3; ++ch)
        for (int y = 0; y < size; ++y)
            for (int x = 0; x < size; ++x)
            {
                float const p = resized.rgb[(static_cast<size_t>(y + top) * newW + x + left) * 3 + ch] / 255.0f;
                chw[(static_cast<size_t>(ch) * size + y) * size + x] = (p - kMean[ch]) / kStd[ch];
            }
    return chw;
}

std::vector<float> readFloats(std::string const& path, size_t count)
{
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f)
        throw std::runtime_error("cannot open " + path);
    if (static_cast<size_t>(f.tellg()) != count * sizeof(float))
        throw std::runtime_error(path + ": expected " + std::to_string(count) + " float32 values (3 x size x size)");
    f.seekg(0);
    std::vector<float> v(count);
    f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(count * sizeof(float)));
    return v;
}

} // namespace vimdeploy
