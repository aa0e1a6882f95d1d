#include "exported_model.h"

#include "json.h"    // nlohmann::json as shipped with the LAMMPS headers

#include <algorithm>
#include <filesystem>
#include <stdexcept>
#include <unordered_map>

#ifndef MLIP_FORMAT_NAME
#error "MLIP_FORMAT_NAME must be defined (CMakeLists.txt reads it from mlip_md/contract.py)"
#endif

namespace mlip {

using LAMMPS_NS::json;

static json read_metadata(const std::string &path, torch::jit::Module &module)
{
  std::unordered_map<std::string, std::string> extra_files{{MLIP_METADATA_FILE, ""}};
  try {
    module = torch::jit::load(path, torch::kCPU, extra_files);
  } catch (const std::exception &error) {
    std::string detail = error.what();
    detail = detail.substr(0, detail.find('\n'));
    throw std::runtime_error(path + " is not a readable TorchScript model file (" + detail + ")");
  }
  const std::string &raw = extra_files[MLIP_METADATA_FILE];
  if (raw.empty())
    throw std::runtime_error(path + " is a TorchScript file without mlip_md metadata (" +
                             std::string(MLIP_METADATA_FILE) + "); write models with mlip_md.export");
  // strict JSON (no NaN or Infinity), as mlip_md.contract.decode_metadata parses it, with its wording
  json metadata = json::parse(raw, nullptr, false);
  if (metadata.is_discarded() || !metadata.is_object())
    throw std::runtime_error(path + ": metadata is not a JSON object (strict JSON: no NaN or Infinity)");
  return metadata;
}

static void check_format(const json &metadata, const std::string &path)
{
  if (!metadata.contains("format") || metadata["format"] != MLIP_FORMAT_NAME)
    throw std::runtime_error(path + ": metadata format is " +
                             (metadata.contains("format") ? metadata["format"].dump() : "missing") +
                             ", expected \"" + MLIP_FORMAT_NAME + "\"");
  if (!metadata.contains("format_version") || metadata["format_version"] != MLIP_FORMAT_VERSION)
    throw std::runtime_error(
        path + ": model format version " +
        (metadata.contains("format_version") ? metadata["format_version"].dump() : "missing") +
        " is not supported; this plugin reads version " + std::to_string(MLIP_FORMAT_VERSION) +
        ". Re-export the model with a matching mlip_md.");
  for (const char *key : {"species", "cutoff", "n_interactions", "n_features", "dtype", "ensemble_size"})
    if (!metadata.contains(key)) throw std::runtime_error(path + ": metadata lacks the key " + key);
}

/* every method of mlip_md.contract.REQUIRED_METHODS (a comma-separated list from CMakeLists.txt) */
static void check_methods(const torch::jit::Module &module, const std::string &path)
{
  std::string methods = MLIP_REQUIRED_METHODS;
  for (size_t begin = 0; begin <= methods.size();) {
    size_t end = std::min(methods.find(',', begin), methods.size());
    std::string method = methods.substr(begin, end - begin);
    if (!module.find_method(method))
      throw std::runtime_error(path + ": the module lacks the method " + method +
                               "; re-export it with mlip_md.export");
    begin = end + 1;
  }
}

ExportedModel load_exported_model(const std::string &path)
{
  if (!std::filesystem::is_regular_file(path))
    throw std::runtime_error("model file not found: " + path);
  ExportedModel model;
  json metadata = read_metadata(path, model.module);
  check_format(metadata, path);
  try {
    model.species = metadata["species"].get<std::vector<std::string>>();
    model.cutoff = metadata["cutoff"].get<double>();
    model.n_interactions = metadata["n_interactions"].get<int>();
    model.n_features = metadata["n_features"].get<int>();
    model.ensemble_size = metadata["ensemble_size"].get<int>();
    model.dtype_name = metadata["dtype"].get<std::string>();
  } catch (const std::exception &error) {
    throw std::runtime_error(path + ": malformed metadata (" + error.what() + ")");
  }
  if (model.dtype_name == "float64")
    model.dtype = torch::kFloat64;
  else if (model.dtype_name == "float32")
    model.dtype = torch::kFloat32;
  else
    throw std::runtime_error(path + ": unknown dtype \"" + model.dtype_name +
                             "\"; expected float32 or float64");
  if (model.species.empty() || model.cutoff <= 0.0 || model.n_interactions < 1 || model.n_features < 1 ||
      model.ensemble_size < 1)
    throw std::runtime_error(path + ": metadata has an empty species list or a non-positive cutoff, "
                             "layer count, feature count or ensemble size");
  check_methods(model.module, path);
  model.module.eval();
  return model;
}

}    // namespace mlip
