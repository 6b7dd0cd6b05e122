/* Several splits in one file: adding a split, refusing to replace one
 * without force, replacing with force, clearing a half-written split left
 * by a killed pack, and refusing foreign files. */
#include <lmdb.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_dataset.h"
#include "amdim_pack.h"
#include "testutil.h"

static void write_cifar(const char *path, int count, uint8_t label)
{
    size_t rec = 3073;
    uint8_t *b = calloc((size_t)count, rec);
    for (int i = 0; i < count; i++) {
        b[rec * i] = label;
        memset(b + rec * i + 1, i, 3072);
    }
    test_write_file(path, b, rec * (size_t)count);
    free(b);
}

static int pack(const char *src, const char *split, int force, char *err, size_t n)
{
    amdim_pack_options o = {0};
    o.format = AMDIM_PACK_CIFAR10;
    o.src = src;
    o.out = test_path("d.lmdb");
    o.split = split;
    o.force = force;
    amdim_pack_summary sum;
    return amdim_pack_run(&o, &sum, err, n);
}

static uint64_t records(const char *split)
{
    char err[1024];
    amdim_dataset *ds;
    REQUIRE(amdim_dataset_open(&ds, test_path("d.lmdb"), err, sizeof err) == 0, "%s", err);
    amdim_split_info info;
    uint64_t n = amdim_dataset_split_info(ds, split, &info) == 0 ? info.records : 0;
    amdim_dataset_close(ds);
    return n;
}

int main(void)
{
    write_cifar(test_path("a.bin"), 5, 1);
    write_cifar(test_path("b.bin"), 3, 2);
    char err[2048];
    REQUIRE(pack(test_path("a.bin"), "train", 0, err, sizeof err) == 0, "%s", err);
    REQUIRE(pack(test_path("b.bin"), "test", 0, err, sizeof err) == 0, "%s", err);
    CHECK(records("train") == 5 && records("test") == 3, "two splits");

    int st = pack(test_path("b.bin"), "train", 0, err, sizeof err);
    CHECK(st == AMDIM_E_EXISTS && strstr(err, "--force"), "replace without force: %d %s", st, err);
    CHECK(records("train") == 5, "refused replace changed the split");
    REQUIRE(pack(test_path("b.bin"), "train", 1, err, sizeof err) == 0, "%s", err);
    CHECK(records("train") == 3 && records("test") == 3, "forced replace");

    /* A split database without its meta keys is what a killed pack leaves. */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    mdb_env_create(&env);
    mdb_env_set_maxdbs(env, 16);
    REQUIRE(mdb_env_open(env, test_path("d.lmdb"), MDB_NOSUBDIR | MDB_NOLOCK, 0644) == 0, "open");
    mdb_txn_begin(env, NULL, 0, &txn);
    mdb_dbi_open(txn, "val", MDB_CREATE, &dbi);
    uint8_t key[8] = {0}, junk[4] = {1, 2, 3, 4};
    MDB_val k = {8, key}, v = {4, junk};
    mdb_put(txn, dbi, &k, &v, 0);
    REQUIRE(mdb_txn_commit(txn) == 0, "commit");
    mdb_env_close(env);
    amdim_dataset *ds;
    REQUIRE(amdim_dataset_open(&ds, test_path("d.lmdb"), err, sizeof err) == 0, "%s", err);
    CHECK(amdim_dataset_split_count(ds) == 2, "half-written split is visible");
    amdim_dataset_close(ds);
    REQUIRE(pack(test_path("a.bin"), "val", 0, err, sizeof err) == 0, "%s", err);
    CHECK(records("val") == 5, "val after clearing the leftover: %llu", (unsigned long long)records("val"));

    /* Foreign files are not touched without force. */
    test_write_file(test_path("foreign.lmdb"), "hello", 5);
    amdim_pack_options o = {0};
    o.format = AMDIM_PACK_CIFAR10;
    o.src = test_path("a.bin");
    o.out = test_path("foreign.lmdb");
    amdim_pack_summary sum;
    st = amdim_pack_run(&o, &sum, err, sizeof err);
    CHECK(st == AMDIM_E_EXISTS && strstr(err, "foreign.lmdb"), "foreign file: %d %s", st, err);
    size_t len;
    char *data = test_read_file(test_path("foreign.lmdb"), &len);
    CHECK(data && len == 5, "foreign file changed");
    free(data);
    st = amdim_dataset_open(&ds, test_path("foreign.lmdb"), err, sizeof err);
    CHECK(st == AMDIM_E_CORRUPT && strstr(err, "foreign.lmdb"), "opening a foreign file: %d %s", st, err);
    o.force = 1;
    CHECK(amdim_pack_run(&o, &sum, err, sizeof err) == 0, "forced overwrite: %s", err);
    return test_finish("test_pack_splits");
}
