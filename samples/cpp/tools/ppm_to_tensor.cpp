// ppm_to_tensor IMAGE.ppm OUT.bin [SIZE]: the sample's preprocessing alone (no TensorRT,
// no CUDA): writes the (3, SIZE, SIZE) float32 tensor vim_classify would feed the engine.
// tests/test_cpp_sample.py compares it with vimdeploy.data.preprocess.
#include "../preprocess.h"

#include <cstdio>
#include <exception>
#include <fstream>
#include <string>

int main(int argc, char** argv)
{
    if (argc < 3)
    {
        std::fprintf(stderr, "usage: %s IMAGE.ppm OUT.bin [SIZE=224]\n", argv[0]);
        return 2;
    }
    try
    {
        int const size = argc > 3 ? std::stoi(argv[3]) : 224;
        std::vector<float> const t = vimdeploy::preprocess(vimdeploy::readPpm(argv[1]), size);
        std::ofstream(argv[2], std::ios::binary)
            .write(reinterpret_cast<char const*>(t.data()), static_cast<std::streamsize>(t.size() * sizeof(float)));
    }
    catch (std::exception const& e)
    {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
