/* A map from LAMMPS atom IDs (tags) to ints, default -1: a flat array when
   the IDs are dense enough, a hash map otherwise. reset() clears the entries
   of the previous use in time proportional to their number. */

#ifndef MLIP_TAG_MAP_H
#define MLIP_TAG_MAP_H

#include "lmptype.h"

#include <algorithm>
#include <unordered_map>
#include <vector>

namespace mlip {

class TagMap {
 public:
  // prepares for the IDs of `n` atoms, `tags[0..n)`
  void reset(const LAMMPS_NS::tagint *tags, int n)
  {
    for (LAMMPS_NS::tagint t : used) dense[t] = -1;
    used.clear();
    sparse.clear();
    LAMMPS_NS::tagint max_tag = 0;
    for (int a = 0; a < n; a++) max_tag = std::max(max_tag, tags[a]);
    use_dense = max_tag <= 16 * static_cast<LAMMPS_NS::tagint>(n) + 1000000;
    if (use_dense && static_cast<LAMMPS_NS::tagint>(dense.size()) <= max_tag) dense.resize(max_tag + 1, -1);
  }

  // the value stored for `tag`, -1 if none (stores nothing)
  int find(LAMMPS_NS::tagint tag) const
  {
    if (use_dense) return dense[tag];
    auto found = sparse.find(tag);
    return found == sparse.end() ? -1 : found->second;
  }

  // the value stored for `tag`, -1 if none yet; assignable
  int &slot(LAMMPS_NS::tagint tag)
  {
    if (!use_dense) return sparse.try_emplace(tag, -1).first->second;
    if (dense[tag] < 0) used.push_back(tag);
    return dense[tag];
  }

 private:
  bool use_dense = true;
  std::vector<int> dense;
  std::vector<LAMMPS_NS::tagint> used;
  std::unordered_map<LAMMPS_NS::tagint, int> sparse;
};

}    // namespace mlip

#endif
