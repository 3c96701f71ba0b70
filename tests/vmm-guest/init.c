/* The init of the guest the keel-vmm end-to-end test boots: it says it
 * runs, writes keel-vmm's boot-timer through /dev/mem, and reboots, which
 * ends the VMM through its i8042. */
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#define BOOT_TIMER 0xd0000000UL
#define BOOT_TIMER_MAGIC 123

int main(void) {
    mkdir("/dev", 0755);
    if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL) != 0)
        perror("keel-vmm-guest: mount /dev");
    printf("keel-vmm-guest: init running\n");
    /* Out through the serial port before the boot-timer line keel-vmm
     * prints (both reach the same log). */
    fflush(stdout);
    tcdrain(1);
    int fd = open("/dev/mem", O_RDWR | O_SYNC);
    if (fd < 0) {
        perror("keel-vmm-guest: /dev/mem");
    } else {
        volatile unsigned char *p =
            mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, BOOT_TIMER);
        if (p == MAP_FAILED) {
            perror("keel-vmm-guest: mmap the boot timer");
        } else {
            *p = BOOT_TIMER_MAGIC;
            printf("keel-vmm-guest: boot timer written\n");
        }
    }
    fflush(stdout);
    /* The console's output is still in the tty layer: let it reach the
     * serial port before the machine goes. */
    tcdrain(1);
    sync();
    reboot(RB_AUTOBOOT);
    return 1;
}
