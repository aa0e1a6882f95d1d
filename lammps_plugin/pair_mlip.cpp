/* pair_style mlip: see pair_mlip.h for the input syntax and the parallel schemes
   (comm layer lives in pair_mlip_layer.cpp), and mlip_md/contract.py for the
   exported-model contract:
     energies_and_gradients(species [N], edge_index [2,E], edge_vectors [E,3], n_owned)
      -> ([M,N] eV, [M,E,3] dE/dr_e of the owned atoms' energy)
     g_e = dE/dr_e;  F_i += g_e, F_j -= g_e;  virial W = -sum_e r_e (x) g_e. */

#include "pair_mlip.h"

#include "exported_model.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstring>
#ifdef __GLIBC__
#include <malloc.h>
#endif

using namespace LAMMPS_NS;

PairMLIP::PairMLIP(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;    // the virial comes from the edge gradients
  centroidstressflag = CENTROID_NOTAVAIL;
  // compute pair mlip, summed over ranks (see pair_mlip.h): nodes, edges,
  // model seconds, pair seconds, exchanged ghosts, exchange seconds
  nextra = 6;
  pvector = new double[nextra]{0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
}

PairMLIP::~PairMLIP()
{
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
  memory->destroy(forces_uncertainty);
  memory->destroy(member_forces);
  delete[] pvector;
}

void PairMLIP::allocate()
{
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  memory->create(cutghost, n, n, "pair:cutghost");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
}

/* pair_style mlip [comm layer|shell] [threads N] [keep_freed_memory yes|no] */

void PairMLIP::settings(int narg, char **arg)
{
  int iarg = 0;
  while (iarg < narg) {
    bool known = strcmp(arg[iarg], "threads") == 0 || strcmp(arg[iarg], "keep_freed_memory") == 0 ||
        strcmp(arg[iarg], "comm") == 0;
    if (!known)
      error->all(FLERR, "pair_style mlip: unknown option '{}' (known: comm layer|shell, threads N, "
                 "keep_freed_memory yes|no)", arg[iarg]);
    if (iarg + 2 > narg) error->all(FLERR, "pair_style mlip: option '{}' needs a value", arg[iarg]);
    if (strcmp(arg[iarg], "comm") == 0) {
      std::string scheme = arg[iarg + 1];
      if (scheme != "layer" && scheme != "shell")
        error->all(FLERR, "pair_style mlip: comm must be layer or shell, got '{}'", scheme);
      layer_scheme = scheme == "layer";
    } else if (strcmp(arg[iarg], "threads") == 0) {
      n_threads = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (n_threads < 1) error->all(FLERR, "pair_style mlip: threads must be >= 1, got {}", n_threads);
    } else {
      keep_freed_memory = utils::logical(FLERR, arg[iarg + 1], false, lmp) == 1;
    }
    iarg += 2;
  }
  ghost_mode = comm->nprocs > 1 && !layer_scheme;
  layer_mode = comm->nprocs > 1 && layer_scheme;
  ghostneigh = ghost_mode ? 1 : 0;
}

/* pair_coeff * * model.pt El1 El2 ... (one element symbol or NULL per atom type) */

void PairMLIP::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  int ntypes = atom->ntypes;
  if (narg < 3 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for pair_style mlip must be: pair_coeff * * model.pt El1 El2 ...");
  if (narg != 3 + ntypes)
    error->all(FLERR,
               "pair_coeff for pair_style mlip needs one element or NULL per atom type: "
               "got {} after the model file, the box has {} atom types",
               narg - 3, ntypes);
  try {
    model = std::make_unique<mlip::ExportedModel>(mlip::load_exported_model(arg[2]));
  } catch (const std::exception &problem) {
    error->all(FLERR, "pair_style mlip: {}", problem.what());
  }

  species_of_type.assign(ntypes + 1, -1);
  for (int type = 1; type <= ntypes; type++) {
    std::string element = arg[2 + type];
    if (element == "NULL") continue;
    int index = -1;
    for (size_t s = 0; s < model->species.size(); s++)
      if (model->species[s] == element) index = static_cast<int>(s);
    if (index < 0)
      error->all(FLERR, "pair_style mlip: element {} (atom type {}) is not in model {}, which knows: {}",
                 element, type, arg[2], utils::join_words(model->species, " "));
    species_of_type[type] = index;
  }
  int count = 0;
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) {
      setflag[i][j] = (species_of_type[i] >= 0 && species_of_type[j] >= 0) ? 1 : 0;
      count += setflag[i][j];
    }
  if (count == 0) error->all(FLERR, "pair_style mlip: pair_coeff maps no atom type to an element");
  // buffer sizes for the widest exchange: per-member forces, or features of every member
  int members = model->ensemble_size;
  comm_forward = layer_mode ? members * model->n_features : 0;
  comm_reverse = std::max(members > 1 ? 3 * members : 0, comm_forward);
}

void PairMLIP::init_style()
{
  if (!model) error->all(FLERR, "pair_style mlip: no model; give pair_coeff * * model.pt ...");
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "pair_style mlip requires 'units metal' (eV, Angstrom); this input uses units {}",
               update->unit_style);
  if (atom->tag_enable == 0) error->all(FLERR, "pair_style mlip requires atom IDs");
  if (comm->nprocs > 1 && force->newton_pair == 0)
    error->all(FLERR,
               "pair_style mlip on {} MPI ranks requires newton_pair on (ghost forces are returned "
               "to their owners by reverse communication); remove 'newton off' or run on one rank",
               comm->nprocs);
  // pair_style hybrid sizes LAMMPS's communication buffers from its sub-styles'
  // sizes when its settings are read, before pair_coeff loaded the model
  Pair *top = force->pair;
  if (top != this) {
    top->comm_forward = std::max(top->comm_forward, comm_forward);
    top->comm_reverse = std::max(top->comm_reverse, comm_reverse);
  }
  if (ghost_mode) {
    neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);
    // Message passing over n layers needs every atom within n * cutoff of an
    // owned atom, with complete neighbour lists for those within (n-1) * cutoff.
    double shell = model->n_interactions * model->cutoff + neighbor->skin;
    if (comm->cutghostuser < shell) comm->cutghostuser = shell;
  } else {
    neighbor->add_request(this, NeighConst::REQ_FULL);
  }
  torch::set_num_threads(n_threads);
#ifdef __GLIBC__
  // Each step allocates and frees large tensors: served from the heap and kept
  // after free, their pages are reused instead of mapped and faulted in afresh
  // (resident memory stays at its peak; the plugin owns its process).
  if (keep_freed_memory) {
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  }
#endif
}

double PairMLIP::init_one(int i, int j)
{
  if (setflag[i][j] == 0) error->all(FLERR, "All pair coeffs are not set");
  cutghost[i][j] = cutghost[j][i] = model->cutoff;
  return model->cutoff;
}

/* ---------------------------------------------------------------------- */

void PairMLIP::grow_peratom()
{
  if (atom->nmax <= nmax_peratom) return;
  nmax_peratom = atom->nmax;
  memory->destroy(forces_uncertainty);
  memory->destroy(member_forces);
  memory->create(forces_uncertainty, nmax_peratom, "pair:forces_uncertainty");
  int columns = model->ensemble_size > 1 ? 3 * model->ensemble_size : 1;
  memory->create(member_forces, nmax_peratom, columns, "pair:member_forces");
}

/* Fills `within` with the positions in atom i's neighbour list of the
   neighbours closer than the cutoff; returns their count. Most pairs of the
   skin list lie beyond the cutoff: they are skipped without a branch per
   pair (it would mispredict). */

int PairMLIP::neighbors_within(int i)
{
  const double *x = atom->x[0];    // LAMMPS stores the [nall][3] coordinates contiguously
  const double *xi = x + 3 * i;
  int *neighbors = list->firstneigh[i];
  double cut2 = model->cutoff * model->cutoff;
  int n_candidates = list->numneigh[i], n_within = 0;
  if (static_cast<int>(within.size()) < n_candidates) within.resize(n_candidates);
  for (int jj = 0; jj < n_candidates; jj++) {
    const double *xj = x + 3 * (neighbors[jj] & NEIGHMASK);
    double d[3] = {xj[0] - xi[0], xj[1] - xi[1], xj[2] - xi[2]};
    within[n_within] = jj;
    n_within += d[0] * d[0] + d[1] * d[1] + d[2] * d[2] < cut2;
  }
  return n_within;
}

/* d = x_j - x_i (Angstrom) for atoms i and j; stops the run if they coincide. */

void PairMLIP::pair_vector(int i, int j, double *d)
{
  const double *xi = atom->x[i], *xj = atom->x[j];
  for (int k = 0; k < 3; k++) d[k] = xj[k] - xi[k];
  double r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
  if (r2 < 1e-16)
    error->one(FLERR, "pair_style mlip: atoms ID {} and ID {} sit on top of each other (distance {:.2g} A)",
               atom->tag[i], atom->tag[j], std::sqrt(r2));
}

/* comm shell and one rank: the model graph, built by breadth-first search
   from the owned atoms over edges shorter than the cutoff. A node is an atom ID (tag): the first copy of
   an atom that the search reaches stands for all its copies (periodic images
   have the same environment, hence the same features), so on one rank the
   model runs on the owned atoms only, and on several ranks on the owned atoms
   plus each other-rank atom within n_interactions hops, once. Nodes within
   n_interactions - 1 hops receive messages and get edges; a node first
   reached at hop h lies within h cutoffs of an owned atom, so its neighbour
   list is complete when the ghost shell is n_interactions * cutoff thick. */

void PairMLIP::build_graph()
{
  int nlocal = atom->nlocal;
  int nall = nlocal + atom->nghost;
  int *type = atom->type;
  tagint *tag = atom->tag;
  auto in_model = [&](int a) { return species_of_type[type[a]] >= 0; };

  row_of_atom.assign(nall, -1);
  int n_rows = list->inum + (ghost_mode ? list->gnum : 0);
  for (int row = 0; row < n_rows; row++) row_of_atom[list->ilist[row]] = row;
  node_of_tag.reset(tag, nall);

  graph.clear();
  for (int i = 0; i < nlocal; i++)
    if (in_model(i)) graph.add_node(i, node_of_tag.slot(tag[i]));
  graph.n_local_nodes = graph.n_nodes();

  int begin = 0, end = graph.n_local_nodes;    // the nodes first reached at this hop
  for (int hop = 0; hop < model->n_interactions; hop++) {
    for (int node = begin; node < end; node++) {
      int i = graph.node_atom[node];
      if (row_of_atom[i] < 0)
        error->one(FLERR, "pair_style mlip: atom ID {} is {} hops from an owned atom but has no neighbour list",
                   tag[i], hop);
      int *neighbors = list->firstneigh[i];
      int n_within = neighbors_within(i);
      for (int w = 0; w < n_within; w++) {
        int j = neighbors[within[w]] & NEIGHMASK;
        if (!in_model(j)) continue;
        double d[3];
        pair_vector(i, j, d);
        int &target = node_of_tag.slot(tag[j]);
        if (target < 0) graph.add_node(j, target);
        // owned atoms take their forces directly; ghosts of other ranks' atoms by reverse communication
        int force_atom = target < graph.n_local_nodes ? graph.node_atom[target] : j;
        graph.add_edge(node, target, i, force_atom, d);
      }
    }
    begin = end;
    end = graph.n_nodes();
  }
}

/* ---------------------------------------------------------------------- */

static double seconds_since(std::chrono::steady_clock::time_point start)
{
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void PairMLIP::compute(int eflag, int vflag)
{
  auto start = std::chrono::steady_clock::now();
  ev_init(eflag, vflag);
  grow_peratom();
  if (layer_mode) {
    build_layer_graph();
    pvector[0] = graph.n_local_nodes;    // the ghosts' rows are not evaluated
    pvector[4] = graph.n_nodes() - graph.n_local_nodes;
  } else {
    build_graph();
    pvector[0] = graph.n_nodes();
  }
  pvector[1] = graph.n_edges();

  Evaluation result;
  if (layer_mode || graph.n_local_nodes > 0) {    // every rank takes part in the exchanges
    try {
      auto model_start = std::chrono::steady_clock::now();
      double exchange_before = pvector[5];
      result = layer_mode ? evaluate_layers() : evaluate();
      pvector[2] += seconds_since(model_start) - (pvector[5] - exchange_before);
    } catch (const std::exception &problem) {
      error->one(FLERR, "pair_style mlip: model evaluation failed: {}", problem.what());
    }
    if (graph.n_local_nodes > 0) tally(result);
  }
  if (model->ensemble_size > 1) tally_members(result);
  pvector[3] += seconds_since(start);
}

/* The graph as the model's inputs: species [n_nodes], edge_index [2, E],
   edge_vectors [E, 3] in the model's dtype. */

PairMLIP::GraphTensors PairMLIP::graph_tensors()
{
  int n_nodes = graph.n_nodes();
  int n_edges = graph.n_edges();
  int *type = atom->type;
  torch::Tensor species = torch::empty({n_nodes}, torch::kInt64);
  auto species_data = species.data_ptr<int64_t>();
  for (int n = 0; n < n_nodes; n++) species_data[n] = species_of_type[type[graph.node_atom[n]]];
  torch::Tensor edge_index = torch::empty({2, n_edges}, torch::kInt64);
  std::copy(graph.edge_i.begin(), graph.edge_i.end(), edge_index.data_ptr<int64_t>());
  std::copy(graph.edge_j.begin(), graph.edge_j.end(), edge_index.data_ptr<int64_t>() + n_edges);
  // graph.edge_vectors outlives this call: float64 models read it in place
  torch::Tensor vectors =
      torch::from_blob(graph.edge_vectors.data(), {n_edges, 3}, torch::kFloat64).to(model->dtype);
  return {species, edge_index, vectors};
}

/* comm shell and one rank: runs the model once on the graph (see summarize). */

PairMLIP::Evaluation PairMLIP::evaluate()
{
  GraphTensors inputs = graph_tensors();
  torch::Tensor energies, member_gradients;
  {
    // the model's hand-written reverse pass: no autograd graph
    torch::NoGradGuard no_grad;
    // op-by-op execution: no profiling runs or recompilation as graph sizes change
    torch::jit::GraphOptimizerEnabledGuard no_optimizer(false);
    auto output = model->module.get_method("energies_and_gradients")(
        {inputs.species, inputs.edge_index, inputs.edge_vectors, static_cast<int64_t>(graph.n_local_nodes)});
    auto pair = output.toTuple();
    energies = pair->elements()[0].toTensor();
    member_gradients = pair->elements()[1].toTensor();
  }
  return summarize(energies.narrow(1, 0, std::min<int64_t>(energies.size(1), graph.n_local_nodes)),
                   member_gradients);
}

/* The Evaluation from each member's per-atom energies of the owned nodes
   [M, n_local_nodes] and edge gradients [M, E, 3], after checking their
   shapes: contiguous CPU tensors of the mean per-atom energies (float64), the
   mean edge gradients dE/dr_e (the model's dtype) and, for ensembles, each
   member's edge gradients (float64). */

PairMLIP::Evaluation PairMLIP::summarize(const torch::Tensor &energies, const torch::Tensor &member_gradients)
{
  int members = model->ensemble_size;
  if (energies.dim() != 2 || energies.size(0) != members || energies.size(1) != graph.n_local_nodes)
    throw std::runtime_error("model energies have " + std::to_string(energies.dim()) + " dimensions or the wrong "
                             "size, expected [" + std::to_string(members) + ", " +
                             std::to_string(graph.n_local_nodes) + "]");
  if (member_gradients.dim() != 3 || member_gradients.size(0) != members ||
      member_gradients.size(1) != graph.n_edges())
    throw std::runtime_error("model edge gradients have the wrong shape");

  Evaluation result;
  result.node_energies = energies.mean(0).to(torch::kFloat64).contiguous();
  // The tallies read the model's dtype: no float64 copy of every edge gradient of a float32 model.
  if (members > 1) {
    result.gradients = member_gradients.mean(0).contiguous();
    result.member_gradients = member_gradients.to(torch::kFloat64).contiguous();
  } else {
    result.gradients = member_gradients[0].contiguous();    // no copy
  }
  return result;
}

/* energy, forces and virials from the mean model */

void PairMLIP::tally(const Evaluation &result)
{
  const double *energy = result.node_energies.data_ptr<double>();
  bool single = result.gradients.scalar_type() == torch::kFloat32;
  // A NaN or inf anywhere makes these sums non-finite; the run then stops before the step ends.
  double gradient_sum = single ? tally_forces(result.gradients.data_ptr<float>())
                               : tally_forces(result.gradients.data_ptr<double>());
  double energy_sum = 0.0;
  for (int n = 0; n < graph.n_local_nodes; n++) {
    energy_sum += energy[n];
    if (eflag_global) eng_vdwl += energy[n];
    if (eflag_atom) eatom[graph.node_atom[n]] += energy[n];
  }
  if (!std::isfinite(energy_sum) || !std::isfinite(gradient_sum))
    error->one(FLERR, "pair_style mlip: the model returned non-finite energies or forces on step {} "
               "(atoms far closer than in any training data?)", update->ntimestep);
  if (vflag_either) {
    if (single)
      tally_virial(result.gradients.data_ptr<float>());
    else
      tally_virial(result.gradients.data_ptr<double>());
  }
}

/* F_i += g_e, F_j -= g_e for every edge e = (i, j); returns the sum of all gradient components */

template <typename Scalar> double PairMLIP::tally_forces(const Scalar *gradients)
{
  int n_edges = graph.n_edges();
  double *f = atom->f[0];    // [nall][3], contiguous
  double gradient_sum = 0.0;
  for (int e = 0; e < n_edges; e++) {
    const Scalar *g = &gradients[3 * e];
    double *fi = f + 3 * graph.edge_atom_i[e], *fj = f + 3 * graph.edge_atom_j[e];
    for (int k = 0; k < 3; k++) {
      fi[k] += g[k];
      fj[k] -= g[k];
      gradient_sum += g[k];
    }
  }
  return gradient_sum;
}

/* W = -Σ_e r_e (x) g_e, symmetrised per edge; components xx yy zz xy xz yz */

template <typename Scalar> void PairMLIP::tally_virial(const Scalar *gradients)
{
  int n_edges = graph.n_edges();
  for (int e = 0; e < n_edges; e++) {
    const Scalar *g = &gradients[3 * e];
    const double *r = &graph.edge_vectors[3 * e];
    int i = graph.edge_atom_i[e], j = graph.edge_atom_j[e];
    double w[6] = {-r[0] * g[0],
                   -r[1] * g[1],
                   -r[2] * g[2],
                   -0.5 * (r[0] * g[1] + r[1] * g[0]),
                   -0.5 * (r[0] * g[2] + r[2] * g[0]),
                   -0.5 * (r[1] * g[2] + r[2] * g[1])};
    for (int k = 0; k < 6; k++) {
      if (vflag_global) virial[k] += w[k];
      if (vflag_atom) {
        vatom[i][k] += 0.5 * w[k];
        vatom[j][k] += 0.5 * w[k];
      }
    }
  }
}

/* per-atom force uncertainty sqrt(mean_m |F_i^m - <F_i>|^2) from each member's gradients */

void PairMLIP::tally_members(const Evaluation &result)
{
  int members = model->ensemble_size;
  int columns = 3 * members;
  int nlocal = atom->nlocal;
  int nall = nlocal + atom->nghost;
  for (int i = 0; i < nall; i++)
    for (int c = 0; c < columns; c++) member_forces[i][c] = 0.0;
  int n_edges = graph.n_edges();
  if (result.member_gradients.defined())
    for (int m = 0; m < members; m++)
      for (int e = 0; e < n_edges; e++) {
        const double *g = result.member_gradients.data_ptr<double>() + (static_cast<size_t>(m) * n_edges + e) * 3;
        int i = graph.edge_atom_i[e], j = graph.edge_atom_j[e];
        for (int k = 0; k < 3; k++) {
          member_forces[i][3 * m + k] += g[k];
          member_forces[j][3 * m + k] -= g[k];
        }
      }
  if (comm->nprocs > 1) {
    exchanging = Exchange::member_forces;
    comm->reverse_comm(this, columns);
  }
  for (int i = 0; i < nlocal; i++) {
    double mean[3] = {0.0, 0.0, 0.0};
    for (int m = 0; m < members; m++)
      for (int k = 0; k < 3; k++) mean[k] += member_forces[i][3 * m + k] / members;
    double spread = 0.0;
    for (int m = 0; m < members; m++)
      for (int k = 0; k < 3; k++) {
        double d = member_forces[i][3 * m + k] - mean[k];
        spread += d * d;
      }
    forces_uncertainty[i] = std::sqrt(spread / members);
  }
}

/* reverse communication of per-member forces (comm layer: also of node rows, pair_mlip_layer.cpp) */

int PairMLIP::pack_reverse_comm(int n, int first, double *buf)
{
  if (exchanging == Exchange::node_rows) return pack_rows(n, nullptr, first, buf, true);
  int columns = 3 * model->ensemble_size, m = 0;
  for (int i = first; i < first + n; i++)
    for (int c = 0; c < columns; c++) buf[m++] = member_forces[i][c];
  return m;
}

void PairMLIP::unpack_reverse_comm(int n, int *list_, double *buf)
{
  if (exchanging == Exchange::node_rows) return unpack_rows(n, list_, 0, buf, true);
  int columns = 3 * model->ensemble_size, m = 0;
  for (int i = 0; i < n; i++)
    for (int c = 0; c < columns; c++) member_forces[list_[i]][c] += buf[m++];
}

void *PairMLIP::extract_peratom(const char *name, int &ncols)
{
  ncols = 0;
  if (strcmp(name, "forces_uncertainty") != 0) return nullptr;
  if (model && model->ensemble_size < 2)
    error->all(FLERR, "pair_style mlip: forces_uncertainty needs an ensemble model file (exported from several "
               "members); this model file has one member");
  return forces_uncertainty;
}

double PairMLIP::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += static_cast<double>(nmax_peratom) * sizeof(double);
  if (model) bytes += static_cast<double>(nmax_peratom) * 3 * model->ensemble_size * sizeof(double);
  bytes += graph.edge_vectors.capacity() * sizeof(double);
  bytes += (graph.edge_i.capacity() + graph.edge_j.capacity()) * sizeof(int64_t);
  bytes += (graph.edge_atom_i.capacity() + graph.edge_atom_j.capacity() + graph.node_atom.capacity() +
            row_of_atom.capacity() + node_of_atom.capacity()) * sizeof(int);
  if (exchange.defined()) bytes += static_cast<double>(exchange.numel()) * sizeof(double);
  return bytes;
}
