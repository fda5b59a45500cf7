/* A native tool: argv = [binary, command, --key, value, ...]; stdout is the result (JSON or text).
   Build: gcc -O2 -o greet greet.c (run_runtimes.py does it when gcc is installed). */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    const char *name = "world";
    for (int i = 2; i + 1 < argc; i += 2)
        if (strcmp(argv[i], "--name") == 0) name = argv[i + 1];
    if (argc < 2 || strcmp(argv[1], "greet") != 0) {
        fprintf(stderr, "unknown command\n");
        return 2;
    }
    printf("Hello, %s!\n", name);
    return 0;
}
