/* mkpart - a test helper: writes FILE's bytes as the part of stage INDEX
 * (PROGRAM) in cut ID, the lines a stage of a pipeline sends (header with
 * size and XXH3, base64 data), so that tests can hand any state, damaged or
 * hostile, to the committing stage and resume from it.
 *
 *   mkpart [--seal] ID INDEX PROGRAM FILE >lines
 *
 * --seal adds to FILE's bytes the line 'end HASH' (their XXH3-64) that
 * seals a state (replay-buffer's, stream-sample's): a state made by hand
 * that passes the seal, for the checks behind it.
 *
 * Exit 0, or 1 with a message. */
#include <config.h>

#include "mini-nn.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    uint64_t id, index;
    char *data;
    size_t len;
    mnn_diag_t d = {""};
    const int seal = argc > 1 && !strcmp(argv[1], "--seal");
    argc -= seal;
    argv += seal;
    if (argc != 5 || mnn_parse_u64(argv[1], &id) < 0 || mnn_parse_u64(argv[2], &index) < 0 ||
        index >= MNN_CUT_MAX_STAGES) {
        fprintf(stderr, "usage: mkpart [--seal] ID INDEX PROGRAM FILE\n");
        return 1;
    }
    if (mnn_read_file(argv[4], (size_t)MNN_CUT_MAX_PART, &data, &len, &d) < 0) {
        fprintf(stderr, "mkpart: %s\n", d.msg);
        return 1;
    }
    if (seal) {
        char *sealed = realloc(data, len + 22);
        if (!sealed) {
            free(data);
            fprintf(stderr, "mkpart: out of memory\n");
            return 1;
        }
        data = sealed;
        len += (size_t)snprintf(data + len, 22, "end %016" PRIx64 "\n", mnn_hash64(data, len));
    }
    int rc = mnn_cut_put_part(stdout, id, (uint32_t)index, argv[3], data, len);
    free(data);
    if (rc < 0 || fclose(stdout) != 0) {
        fprintf(stderr, "mkpart: write error\n");
        return 1;
    }
    return 0;
}
