/* pair_style mlip comm layer on several MPI ranks (see pair_mlip.h): each rank
   evaluates its owned atoms one interaction block at a time through the
   exported model's layer-stepping methods (mlip_md/contract.py,
   mlip_md/model/layered.py), exchanging the ghosts' features (forward
   communication) and feature gradients (reverse communication) between
   blocks. Every rank takes part in every exchange, also one without atoms. */

#include "pair_mlip.h"

#include "exported_model.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "neigh_list.h"

#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/torch.h>

#include <chrono>

using namespace LAMMPS_NS;

/* Nodes are the atoms of the model's types, owned ones first (LAMMPS indexes
   owned atoms before ghosts). A ghost that is a periodic image of an owned
   atom shares that atom's node (as on one rank); every other ghost is a node
   of its own, filled by LAMMPS's communication, even where several are
   images of one atom (a relayed ghost's gradient must travel back along the
   path it came). Edges are the owned atoms' pairs within the cutoff. */

void PairMLIP::build_layer_graph()
{
  int nlocal = atom->nlocal;
  int nall = nlocal + atom->nghost;
  int *type = atom->type;
  tagint *tag = atom->tag;

  graph.clear();
  node_of_atom.assign(nall, -1);
  node_of_tag.reset(tag, nall);
  for (int a = 0; a < nlocal; a++)
    if (species_of_type[type[a]] >= 0) {
      graph.add_node(a, node_of_atom[a]);
      node_of_tag.slot(tag[a]) = node_of_atom[a];
    }
  graph.n_local_nodes = graph.n_nodes();
  for (int a = nlocal; a < nall; a++) {
    if (species_of_type[type[a]] < 0) continue;
    int owned = node_of_tag.find(tag[a]);
    if (owned >= 0)
      node_of_atom[a] = owned;
    else
      graph.add_node(a, node_of_atom[a]);
  }

  row_of_atom.assign(nlocal, -1);
  for (int row = 0; row < list->inum; row++)
    if (list->ilist[row] < nlocal) row_of_atom[list->ilist[row]] = row;
  for (int node = 0; node < graph.n_local_nodes; node++) {    // in node order: edges sorted by receiver
    int i = graph.node_atom[node];
    if (row_of_atom[i] < 0)
      error->one(FLERR, "pair_style mlip: owned atom ID {} has no neighbour list", tag[i]);
    int *neighbors = list->firstneigh[i];
    int n_within = neighbors_within(i);
    for (int w = 0; w < n_within; w++) {
      int j = neighbors[within[w]] & NEIGHMASK;
      if (node_of_atom[j] < 0) continue;
      double d[3];
      pair_vector(i, j, d);
      int target = node_of_atom[j];
      // an image of an owned atom takes its force directly, other ghosts through LAMMPS's reverse communication
      graph.add_edge(node, target, i, target < graph.n_local_nodes ? graph.node_atom[target] : j, d);
    }
  }
}

static torch::Tensor element(const c10::ivalue::Tuple &tuple, size_t index)
{
  return tuple.elements()[index].toTensor();
}

/* The model's layer stepping: forward through the blocks with the ghosts'
   features exchanged after each, then back with their feature gradients
   returned to the owners after each. A rank without owned atoms of the
   model's types calls no model method but exchanges zeros. */

PairMLIP::Evaluation PairMLIP::evaluate_layers()
{
  int n_owned = graph.n_local_nodes, layers = model->n_interactions;
  bool active = n_owned > 0;
  torch::NoGradGuard no_grad;
  torch::jit::GraphOptimizerEnabledGuard no_optimizer(false);
  torch::jit::Module &module = model->module;
  torch::Tensor nothing = torch::empty({0}, model->dtype);

  c10::IValue layout;
  if (active) {
    GraphTensors inputs = graph_tensors();
    layout = module.get_method("layer_graph")(
        {inputs.species, inputs.edge_index, inputs.edge_vectors, static_cast<int64_t>(n_owned)});
  }
  std::vector<c10::IValue> states(layers);
  torch::Tensor energies = torch::zeros({model->ensemble_size, n_owned}, torch::kFloat64);
  torch::Tensor features = nothing;
  for (int layer = 0; layer < layers; layer++) {
    torch::Tensor output;
    if (active) {
      auto result = module.get_method("layer_forward")({layer, layout, features}).toTuple();
      output = element(*result, 0);
      energies += element(*result, 1).to(torch::kFloat64);
      states[layer] = result->elements()[2];
    }
    if (layer + 1 < layers) features = exchanged(output, true).to(model->dtype);
  }

  torch::Tensor gradient = nothing;
  c10::IValue radial = c10::List<c10::List<torch::Tensor>>();
  for (int layer = layers - 1; layer >= 0; layer--) {
    torch::Tensor input_gradient;
    if (active) {
      auto result = module.get_method("layer_reverse")({layer, layout, states[layer], gradient, radial}).toTuple();
      input_gradient = element(*result, 0);
      radial = result->elements()[1];
    }
    if (layer > 0) gradient = exchanged(input_gradient, false).to(model->dtype);
  }
  if (!active) return {};
  return summarize(energies, module.get_method("layer_edge_gradients")({layout, radial}).toTensor());
}

/* `rows` [M, n_nodes, F] (undefined on a rank that evaluates nothing) after
   an exchange: forward, the ghosts' rows replaced by their owners'; reverse,
   the ghosts' rows added to their owners'. Returns float64 [M, n_nodes, F]. */

torch::Tensor PairMLIP::exchanged(const torch::Tensor &rows, bool forward)
{
  auto start = std::chrono::steady_clock::now();
  int members = model->ensemble_size, width = model->n_features;
  if (rows.defined()) {
    if (rows.dim() != 3 || rows.size(0) != members || rows.size(1) != graph.n_nodes() || rows.size(2) != width)
      throw std::runtime_error("model layer output has the wrong shape (expected [" + std::to_string(members) +
                               ", " + std::to_string(graph.n_nodes()) + ", " + std::to_string(width) + "])");
    exchange = rows.to(torch::kFloat64).contiguous();
  } else {
    exchange = torch::zeros({members, graph.n_nodes(), width}, torch::kFloat64);
  }
  exchanging = Exchange::node_rows;
  if (forward)
    comm->forward_comm(this, members * width);
  else
    comm->reverse_comm(this, members * width);
  pvector[5] += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return exchange;
}

/* Packs the rows of `exchange` of the atoms atoms[k] (or first + k when
   atoms is null), every member's F values per atom; zeros for an atom
   outside the model and, with `ghost_shares`, for an image of an owned atom
   (its share is in the owned row already). Returns the number of values. */

int PairMLIP::pack_rows(int n, const int *atoms, int first, double *buf, bool ghost_shares)
{
  int members = model->ensemble_size, width = model->n_features, n_nodes = graph.n_nodes();
  int nlocal = atom->nlocal;
  const double *data = exchange.data_ptr<double>();
  int m = 0;
  for (int k = 0; k < n; k++) {
    int a = atoms ? atoms[k] : first + k;
    int node = node_of_atom[a];
    if (ghost_shares && a >= nlocal && node < graph.n_local_nodes) node = -1;
    for (int member = 0; member < members; member++) {
      const double *row = data + (static_cast<size_t>(member) * n_nodes + node) * width;
      for (int f = 0; f < width; f++) buf[m++] = node < 0 ? 0.0 : row[f];
    }
  }
  return m;
}

/* Stores packed rows into `exchange` for the ghosts first + k (the owned
   atoms' rows are left as they are), or adds them for the atoms atoms[k]. */

void PairMLIP::unpack_rows(int n, const int *atoms, int first, const double *buf, bool add)
{
  int members = model->ensemble_size, width = model->n_features, n_nodes = graph.n_nodes();
  double *data = exchange.data_ptr<double>();
  int m = 0;
  for (int k = 0; k < n; k++) {
    int node = node_of_atom[atoms ? atoms[k] : first + k];
    if (node < 0 || (!add && node < graph.n_local_nodes)) {
      m += members * width;
      continue;
    }
    for (int member = 0; member < members; member++) {
      double *row = data + (static_cast<size_t>(member) * n_nodes + node) * width;
      for (int f = 0; f < width; f++, m++) row[f] = add ? row[f] + buf[m] : buf[m];
    }
  }
}

int PairMLIP::pack_forward_comm(int n, int *list_, double *buf, int /*pbc_flag*/, int * /*pbc*/)
{
  return pack_rows(n, list_, 0, buf, false);    // features do not change with a periodic shift
}

void PairMLIP::unpack_forward_comm(int n, int first, double *buf)
{
  unpack_rows(n, nullptr, first, buf, false);
}
