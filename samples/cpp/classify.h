// What both samples do around their runtime: the input tensor (a PPM preprocessed, or a raw
// float32 tensor), the class names, softmax and the top-5.
#pragma once

#include <string>
#include <vector>

namespace vimdeploy
{

// (3, size, size) float32, CHW: IMAGE.bin read as it is (prepare.py --bin, numpy's tofile),
// any other path read as a binary PPM and preprocessed (preprocess.h). Throws
// std::runtime_error with the reason.
std::vector<float> loadInput(std::string const& path, int size);

// One class name a line. Throws std::runtime_error if the file cannot be read.
std::vector<std::string> readLabels(std::string const& path);

// Prints `title`, then the top-5 classes of `logits` with their softmax probability and
// logit, named from `labels` (by index where it has no name).
void printTop5(std::string const& title, std::vector<float> const& logits, std::vector<std::string> const& labels);

} // namespace vimdeploy
