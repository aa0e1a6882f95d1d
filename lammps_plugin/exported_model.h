/* Loads an exported mlip_md model file in C++ (the contract is documented in
   mlip_md/contract.py; its constants reach this code as compile definitions
   read from that file by CMakeLists.txt, so Python and C++ cannot drift). */

#ifndef MLIP_EXPORTED_MODEL_H
#define MLIP_EXPORTED_MODEL_H

#include <torch/script.h>

#include <string>
#include <vector>

namespace mlip {

struct ExportedModel {
  torch::jit::Module module;         // see mlip_md/contract.py: energies_and_gradients(...)
  std::vector<std::string> species;  // element symbols; position = species index
  double cutoff = 0.0;               // Angstrom
  int n_interactions = 0;            // message-passing layers (interaction blocks)
  int n_features = 0;                // width of the features a block passes on
  torch::Dtype dtype = torch::kFloat64;
  int ensemble_size = 1;             // M, rows of the output
  std::string dtype_name;            // "float32" or "float64"
};

/* Opens `path`, reads and checks its metadata. Throws std::runtime_error with a
   message that names the problem: missing file, not a TorchScript file, no
   mlip_md metadata, unknown format or version, missing or malformed keys. */
ExportedModel load_exported_model(const std::string &path);

}    // namespace mlip

#endif
