/* Point-to-point latency and bandwidth between ranks 0 and 1, for bench/mpi-app.sh.
 *
 *   mpi_pingpong [LAT_ITERS [BW_WINDOWS [BW_BYTES]]]   (defaults 10000, 40, 4 MiB)
 *
 * Latency: rank 0 sends 8 bytes, rank 1 sends them back, LAT_ITERS times after a warm-up of
 * a tenth as many; the figure is half the mean round trip. Bandwidth: rank 0 posts WINDOW
 * non-blocking sends of BW_BYTES each into separate buffers, rank 1 the matching receives,
 * then rank 1 answers with one byte; BW_WINDOWS such windows after two warm-up ones; the figure
 * is the bytes rank 1 received over the time rank 0 took, in MB/s (10^6). The last window's
 * data are checked. Ranks beyond 1 only take part in the barriers.
 *
 * Rank 0 prints one machine-readable line:
 *   latency_us=L bandwidth_MBps=B check=ok|bad marker=M host0=H host1=H
 * (marker: the first word of /marker, "slipway-mpi-image" in the bench's image, else "none").
 * Exit status 0 unless the check failed or MPI did. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WINDOW 8
#define SMALL 8

static unsigned char fill(int w, size_t i) { return (unsigned char)(i * 31 + (size_t)w * 7 + 1); }

int main(int argc, char **argv)
{
    long lat_iters = argc > 1 ? atol(argv[1]) : 10000;
    long bw_windows = argc > 2 ? atol(argv[2]) : 40;
    size_t bw_bytes = argc > 3 ? (size_t)atol(argv[3]) : (size_t)4 << 20;
    int rank, size, ok = 1;
    char host[64] = "?", peer[64] = "?", marker[64] = "none";
    unsigned char small[SMALL] = {0}, ack = 0;
    unsigned char *buf[WINDOW];
    MPI_Request req[WINDOW];
    FILE *f = fopen("/marker", "r");

    if (f) {
        if (fscanf(f, "%63s", marker) != 1) strcpy(marker, "none");
        fclose(f);
    }
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size < 2 || lat_iters < 1 || bw_windows < 1 || bw_bytes < 1 || bw_bytes > INT32_MAX) {
        if (rank == 0) fprintf(stderr, "mpi_pingpong: needs 2 ranks and positive sizes\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    gethostname(host, sizeof host - 1);
    if (rank == 0) MPI_Recv(peer, sizeof peer, MPI_CHAR, 1, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    if (rank == 1) MPI_Send(host, sizeof host, MPI_CHAR, 0, 1, MPI_COMM_WORLD);
    for (int w = 0; w < WINDOW; w++) {
        buf[w] = malloc(bw_bytes);
        if (!buf[w]) MPI_Abort(MPI_COMM_WORLD, 3);
        memset(buf[w], 0, bw_bytes);
    }

    /* Latency. */
    long warm = lat_iters / 10 + 1;
    double t0 = 0;
    MPI_Barrier(MPI_COMM_WORLD);
    for (long i = 0; i < warm + lat_iters; i++) {
        if (i == warm) t0 = MPI_Wtime();
        if (rank == 0) {
            MPI_Send(small, SMALL, MPI_BYTE, 1, 2, MPI_COMM_WORLD);
            MPI_Recv(small, SMALL, MPI_BYTE, 1, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
            MPI_Recv(small, SMALL, MPI_BYTE, 0, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(small, SMALL, MPI_BYTE, 0, 2, MPI_COMM_WORLD);
        }
    }
    double lat_us = (MPI_Wtime() - t0) / (2.0 * lat_iters) * 1e6;

    /* Bandwidth. */
    if (rank == 0)
        for (int w = 0; w < WINDOW; w++)
            for (size_t i = 0; i < bw_bytes; i++) buf[w][i] = fill(w, i);
    MPI_Barrier(MPI_COMM_WORLD);
    for (long i = 0; i < 2 + bw_windows; i++) {
        if (i == 2) t0 = MPI_Wtime();
        if (rank == 0) {
            for (int w = 0; w < WINDOW; w++)
                MPI_Isend(buf[w], (int)bw_bytes, MPI_BYTE, 1, 3, MPI_COMM_WORLD, &req[w]);
            MPI_Waitall(WINDOW, req, MPI_STATUSES_IGNORE);
            MPI_Recv(&ack, 1, MPI_BYTE, 1, 4, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
            for (int w = 0; w < WINDOW; w++)
                MPI_Irecv(buf[w], (int)bw_bytes, MPI_BYTE, 0, 3, MPI_COMM_WORLD, &req[w]);
            MPI_Waitall(WINDOW, req, MPI_STATUSES_IGNORE);
            MPI_Send(&ack, 1, MPI_BYTE, 0, 4, MPI_COMM_WORLD);
        }
    }
    double secs = MPI_Wtime() - t0;
    double mbps = (double)bw_bytes * WINDOW * (double)bw_windows / secs / 1e6;
    if (rank == 1)
        for (int w = 0; w < WINDOW && ok; w++)
            for (size_t i = 0; i < bw_bytes; i++)
                if (buf[w][i] != fill(w, i)) { ok = 0; break; }
    int all_ok = 0;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("latency_us=%.3f bandwidth_MBps=%.1f check=%s marker=%s host0=%s host1=%s\n",
               lat_us, mbps, all_ok ? "ok" : "bad", marker, host, peer);
        fflush(stdout);
    }
    for (int w = 0; w < WINDOW; w++) free(buf[w]);
    MPI_Finalize();
    return all_ok ? 0 : 1;
}
