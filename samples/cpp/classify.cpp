#include "classify.h"

#include "preprocess.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <stdexcept>

namespace vimdeploy
{

std::vector<float> loadInput(std::string const& path, int size)
{
    bool const raw = path.size() > 4 && path.compare(path.size() - 4, 4, ".bin") == 0;
    return raw ? readFloats(path, static_cast<size_t>(3) * size * size) : preprocess(readPpm(path), size);
}

std::vector<std::string> readLabels(std::string const& path)
{
    std::ifstream f(path);
    if (!f)
        throw std::runtime_error("cannot open labels file " + path);
    std::vector<std::string> labels;
    for (std::string line; std::getline(f, line);)
        labels.push_back(line);
    return labels;
}

void printTop5(std::string const& title, std::vector<float> const& logits, std::vector<std::string> const& labels)
{
    if (logits.empty())
        throw std::runtime_error("no logits to rank");
    float const top = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (float v : logits)
        sum += std::exp(static_cast<double>(v - top));
    std::vector<int> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    int const k = std::min<int>(5, static_cast<int>(order.size()));
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
    std::printf("%s\n", title.c_str());
    for (int i = 0; i < k; ++i)
    {
        int const c = order[i];
        double const p = std::exp(static_cast<double>(logits[c] - top)) / sum;
        std::string const label = c < static_cast<int>(labels.size()) ? labels[c] : "class " + std::to_string(c);
        std::printf("  %6.2f%%  %s  (%d, logit %.6f)\n", 100.0 * p, label.c_str(), c, logits[c]);
    }
}

} // namespace vimdeploy
