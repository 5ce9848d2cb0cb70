/*
 * The exported ONNX node as the harness reads it (node.txt, written by
 * tests/test_plugin_conformance.py from the real ONNX), and the creator's fields built from it
 * as onnx-tensorrt's loadFields builds them; the byte-for-byte copy that serialization makes
 * of getFieldsToSerialize(); small file readers.
 */
#pragma once

#include <NvInferRuntime.h>

#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace conformance
{
using namespace nvinfer1;

bool check(bool ok, std::string const& what); // conformance.cpp: counts and reports a check

struct Attr
{
    std::string type; // INT, FLOAT, STRING (ONNX attribute types)
    std::string value;
};

struct Node
{
    std::string opType, name;
    std::map<std::string, Attr> attrs;
};

inline Node readNode(std::string const& path)
{
    Node node;
    std::ifstream f(path);
    std::string line;
    while (std::getline(f, line))
    {
        std::istringstream ss(line);
        std::string key;
        ss >> key;
        if (key == "op_type")
            ss >> node.opType;
        else if (key == "name")
            ss >> node.name;
        else if (key == "attr")
        {
            std::string name, type, value;
            ss >> name >> type;
            std::getline(ss >> std::ws, value);
            node.attrs[name] = {type, value};
        }
    }
    return node;
}

inline std::map<std::string, std::string> readKeyValues(std::string const& path)
{
    std::map<std::string, std::string> kv;
    std::ifstream f(path);
    std::string key, value;
    while (f >> key >> value)
        kv[key] = value;
    return kv;
}

inline std::vector<char> readBytes(std::string const& path)
{
    std::ifstream f(path, std::ios::binary);
    return std::vector<char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// onnx-tensorrt's loadFields: the creator's field names, filled from the node's attributes.
struct Fields
{
    std::vector<PluginField> fields;
    std::deque<std::vector<char>> storage;
    PluginFieldCollection fc{};
};

inline void loadFields(Fields& out, Node const& node, PluginFieldCollection const* names)
{
    for (int32_t i = 0; names && i < names->nbFields; ++i)
    {
        char const* name = names->fields[i].name;
        auto it = node.attrs.find(name);
        if (it == node.attrs.end())
        {
            std::printf("note: attribute %s not on the node (the creator's default applies)\n", name);
            continue;
        }
        Attr const& a = it->second;
        std::vector<char> bytes;
        PluginFieldType type{};
        int32_t length = 1;
        if (a.type == "INT")
        {
            int32_t const v = static_cast<int32_t>(std::stoll(a.value)); // the parser narrows to int32
            bytes.assign(reinterpret_cast<char const*>(&v), reinterpret_cast<char const*>(&v) + sizeof v);
            type = PluginFieldType::kINT32;
        }
        else if (a.type == "FLOAT")
        {
            float const v = std::stof(a.value);
            bytes.assign(reinterpret_cast<char const*>(&v), reinterpret_cast<char const*>(&v) + sizeof v);
            type = PluginFieldType::kFLOAT32;
        }
        else if (a.type == "STRING")
        {
            bytes.assign(a.value.begin(), a.value.end());
            bytes.push_back('\0');
            type = PluginFieldType::kCHAR;
            length = static_cast<int32_t>(bytes.size());
        }
        else
        {
            check(false, std::string("attribute ") + name + " has type " + a.type + ", which loadFields cannot pass");
            continue;
        }
        out.storage.push_back(std::move(bytes));
        out.fields.emplace_back(name, out.storage.back().data(), type, length);
    }
    out.fc.nbFields = static_cast<int32_t>(out.fields.size());
    out.fc.fields = out.fields.data();
}

// What serialization does to getFieldsToSerialize(): copy every field's bytes.
inline void copyFields(Fields& out, PluginFieldCollection const* fc)
{
    static const std::map<PluginFieldType, size_t> kSize{{PluginFieldType::kFLOAT16, 2}, {PluginFieldType::kFLOAT32, 4},
        {PluginFieldType::kFLOAT64, 8}, {PluginFieldType::kINT8, 1}, {PluginFieldType::kINT16, 2},
        {PluginFieldType::kINT32, 4}, {PluginFieldType::kCHAR, 1}, {PluginFieldType::kINT64, 8}};
    for (int32_t i = 0; fc && i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        auto const size = kSize.find(f.type);
        if (!check(size != kSize.end() && f.data != nullptr && f.length >= 1,
                std::string("serialized field ") + (f.name ? f.name : "?") + " has a plain type, data and length"))
            continue;
        auto const* p = static_cast<char const*>(f.data);
        out.storage.emplace_back(p, p + size->second * f.length);
        out.storage.emplace_back(f.name, f.name + std::strlen(f.name) + 1);
        out.fields.emplace_back(out.storage.back().data(), out.storage[out.storage.size() - 2].data(), f.type, f.length);
    }
    out.fc.nbFields = static_cast<int32_t>(out.fields.size());
    out.fc.fields = out.fields.data();
}

} // namespace conformance
