/* pair_style mlip: an exported mlip_md model (HIP-NN, TorchScript) in LAMMPS.

   Input deck:
     pair_style mlip [comm layer|shell] [threads N] [keep_freed_memory yes|no]
     pair_coeff * * model.pt El1 El2 ...     (one element or NULL per atom type)

   Serves energy, forces, global and per-atom virial, per-atom energy, and for
   ensemble files the per-atom force uncertainty (extract_peratom name
   "forces_uncertainty", e.g. through fix pair). units metal only.
   `compute ID all pair mlip` gives, summed over ranks: c_ID[1] and c_ID[2]
   the nodes and edges the model evaluated on the last step (the excess over
   one rank's counts is redundant work), c_ID[3] and c_ID[4] the seconds
   spent in the model and in the whole pair style so far, c_ID[5] the ghost
   atoms whose features were exchanged per layer on the last step and c_ID[6]
   the seconds spent in those exchanges so far (comm layer).

   The model sees each atom once, whatever the number of its periodic images
   among the ghosts: on one MPI rank it runs once on the owned atoms (both
   schemes). On several ranks:
   - comm layer (default): each rank evaluates its owned atoms only, with the
     usual ghost shell (cutoff + skin). After every interaction block the
     ghosts' features come from their owners by forward communication; in
     the reverse pass the ghosts' feature gradients go back to their owners
     by reverse communication, block by block (mlip_md/model/layered.py).
   - comm shell: the ghost shell widens to n_interactions * cutoff + skin and
     each rank also evaluates the other ranks' atoms within n_interactions
     hops of its own, once each (redundant work, no exchange inside the model).
   Forces on ghost atoms go back to their owners by LAMMPS's reverse
   communication, which needs newton_pair on. */

#ifndef LMP_PAIR_MLIP_H
#define LMP_PAIR_MLIP_H

#include "pair.h"

#include "tag_map.h"

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace mlip {
struct ExportedModel;
}

namespace LAMMPS_NS {

class PairMLIP : public Pair {
 public:
  PairMLIP(class LAMMPS *);
  ~PairMLIP() override;

  void compute(int eflag, int vflag) override;
  void settings(int narg, char **arg) override;
  void coeff(int narg, char **arg) override;
  void init_style() override;
  double init_one(int i, int j) override;
  void *extract_peratom(const char *name, int &ncols) override;
  int pack_forward_comm(int n, int *list, double *buf, int pbc_flag, int *pbc) override;
  void unpack_forward_comm(int n, int first, double *buf) override;
  int pack_reverse_comm(int n, int first, double *buf) override;
  void unpack_reverse_comm(int n, int *list, double *buf) override;
  double memory_usage() override;

 private:
  // The graph handed to the model: nodes are LAMMPS atom indices, owned ones first.
  struct Graph {
    std::vector<int> node_atom;        // [n_nodes] atom index of each node
    int n_local_nodes = 0;             // nodes [0, n_local_nodes) are owned atoms
    std::vector<int64_t> edge_i;       // [E] receiving node
    std::vector<int64_t> edge_j;       // [E] neighbour node
    std::vector<int> edge_atom_i;      // [E] atom that gets +g_e
    std::vector<int> edge_atom_j;      // [E] atom that gets -g_e
    std::vector<double> edge_vectors;  // [E * 3] r_ij = x_j - x_i, Angstrom
    int n_nodes() const { return static_cast<int>(node_atom.size()); }
    int n_edges() const { return static_cast<int>(edge_i.size()); }
    void add_node(int atom_index, int &node)
    {
      node = n_nodes();
      node_atom.push_back(atom_index);
    }
    void clear()    // keeps the capacity for the next step
    {
      node_atom.clear();
      n_local_nodes = 0;
      edge_i.clear();
      edge_j.clear();
      edge_atom_i.clear();
      edge_atom_j.clear();
      edge_vectors.clear();
    }
    void add_edge(int node_i, int node_j, int atom_i, int atom_j, const double *vector)
    {
      edge_i.push_back(node_i);
      edge_j.push_back(node_j);
      edge_atom_i.push_back(atom_i);
      edge_atom_j.push_back(atom_j);
      edge_vectors.insert(edge_vectors.end(), vector, vector + 3);
    }
  };

  std::unique_ptr<mlip::ExportedModel> model;
  std::vector<int> species_of_type;    // [ntypes + 1] species index, -1 for NULL
  int n_threads = 1;                   // torch intra-op threads per rank
  bool keep_freed_memory = true;       // glibc: reuse freed heap memory (see init_style)
  bool layer_scheme = true;            // comm layer (else comm shell)
  bool ghost_mode = false;             // comm shell on several ranks: evaluate on ghosts too
  bool layer_mode = false;             // comm layer on several ranks: exchange features per block
  Graph graph;
  std::vector<int> node_of_atom;       // [nall] graph node of each atom, -1 if none (comm layer)
  // What the pack/unpack methods move: per-member forces, or rows of `exchange`.
  enum class Exchange { member_forces, node_rows } exchanging = Exchange::member_forces;
  torch::Tensor exchange;              // [M, n_nodes, F] float64: features or feature gradients
  std::vector<int> row_of_atom;        // [nall] neighbour-list row of each atom, -1 if none
  std::vector<int> within;             // scratch: one atom's neighbour-list entries within the cutoff
  mlip::TagMap node_of_tag;            // graph node of each atom ID, -1 if none (comm layer: owned atoms)
  int nmax_peratom = 0;                // allocated rows of the per-atom arrays below
  double *forces_uncertainty = nullptr;  // [nmax] eV/Angstrom
  double **member_forces = nullptr;      // [nmax][3M] forces of each ensemble member

  void allocate();
  void grow_peratom();
  int neighbors_within(int i);
  void pair_vector(int i, int j, double *d);
  void build_graph();
  void build_layer_graph();
  struct Evaluation {                  // contiguous CPU tensors
    torch::Tensor node_energies;       // [n_local_nodes] mean per-atom energy, eV, float64
    torch::Tensor gradients;           // [E, 3] mean dE/dr_e, eV/Angstrom, the model's dtype
    torch::Tensor member_gradients;    // [M, E, 3] per member (ensembles only), float64
  };
  struct GraphTensors {                // the graph as the model's inputs
    torch::Tensor species, edge_index, edge_vectors;
  };
  GraphTensors graph_tensors();
  Evaluation evaluate();
  Evaluation evaluate_layers();
  Evaluation summarize(const torch::Tensor &energies, const torch::Tensor &member_gradients);
  torch::Tensor exchanged(const torch::Tensor &rows, bool forward);
  int pack_rows(int n, const int *atoms, int first, double *buf, bool ghost_shares);
  void unpack_rows(int n, const int *atoms, int first, const double *buf, bool add);
  void tally(const Evaluation &result);
  template <typename Scalar> double tally_forces(const Scalar *gradients);
  template <typename Scalar> void tally_virial(const Scalar *gradients);
  void tally_members(const Evaluation &result);
};

}    // namespace LAMMPS_NS

#endif
