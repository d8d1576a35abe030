/* Tiny MPI probe for the Slipway test cluster: every rank adds its rank with MPI_Allreduce and
 * prints one line "rank=R size=S host=H sum=X marker=M"; the test checks sum = S*(S-1)/2 on
 * every rank and that the ranks ran on more than one host. M is the first word of /marker
 * ("none" without one): the MPI image has one, so a rank shows it runs inside the image. */
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int rank, size, sum = -1;
    char host[256] = "?", marker[64] = "none";
    FILE *f = fopen("/marker", "r");

    if (f) {
        if (fscanf(f, "%63s", marker) != 1) marker[0] = 0;
        fclose(f);
    }
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    gethostname(host, sizeof host - 1);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("rank=%d size=%d host=%s sum=%d marker=%s\n", rank, size, host, sum, marker);
    fflush(stdout);
    MPI_Finalize();
    return sum == size * (size - 1) / 2 ? 0 : 1;
}
