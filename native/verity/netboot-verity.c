// netboot-verity: the initramfs's dm-verity setup for a root kept in the disk cache
// (boot-assets/initramfs/lib/netboot/disk.sh). Busybox has no dmsetup, and Debian's pulls in
// libdevmapper and its libraries; this is the three ioctls it takes, built static.
//
//   netboot-verity open NAME DATA_FILE TREE_FILE DATA_BLOCKS ROOT_HASH SALT   (SALT: hex, or - for none)
//       attaches both files to read-only loop devices (detached again when the mapping goes),
//       creates the read-only mapping NAME over them with the target
//       "verity 1 DATA TREE 4096 4096 DATA_BLOCKS 0 sha256 ROOT_HASH SALT"
//       and prints its device (/dev/dm-N). Every block read from it is checked against
//       ROOT_HASH by the kernel; a block that does not match reads as an I/O error.
//   netboot-verity status NAME
//       prints "verified" or "corrupt" (the kernel saw a block that failed its hash).
//   netboot-verity remove NAME
//
// Exit status 0 on success; 1 with a message on stderr otherwise.

#include <errno.h>
#include <fcntl.h>
#include <linux/dm-ioctl.h>
#include <linux/loop.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define BLOCK_SIZE 4096
#define BUFFER_SIZE 16384

static int die(const char *what, int err) {
  fprintf(stderr, "netboot-verity: %s: %s\n", what, strerror(err));
  return 1;
}

static int open_control(void) {
  int fd = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
  if (fd >= 0 || errno != ENOENT) return fd;
  // devtmpfs normally creates it when dm-mod loads; make it from sysfs if not.
  FILE *f = fopen("/sys/class/misc/device-mapper/dev", "r");
  unsigned maj, min;
  if (!f) return -1;
  int n = fscanf(f, "%u:%u", &maj, &min);
  fclose(f);
  if (n != 2) {
    errno = ENODEV;
    return -1;
  }
  mkdir("/dev/mapper", 0755);
  if (mknod("/dev/mapper/control", S_IFCHR | 0600, makedev(maj, min)) != 0 && errno != EEXIST) return -1;
  return open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
}

static void init_header(struct dm_ioctl *io, const char *name, size_t size) {
  memset(io, 0, size);
  io->version[0] = DM_VERSION_MAJOR;
  io->version[1] = 0;
  io->version[2] = 0;
  io->data_size = (uint32_t)size;
  io->data_start = sizeof(struct dm_ioctl);
  strncpy(io->name, name, sizeof(io->name) - 1);
}

static int dm_simple(int control, unsigned long request, const char *name, uint32_t flags) {
  union {
    struct dm_ioctl io;
    char bytes[BUFFER_SIZE];
  } buf;
  init_header(&buf.io, name, sizeof(buf));
  buf.io.flags = flags;
  return ioctl(control, request, &buf.io);
}

// Attaches `path` read-only to a free loop device; returns its fd (the caller closes it once
// dm holds the device: autoclear then detaches it when the mapping goes).
static int attach_loop(const char *path, dev_t *dev) {
  int file = open(path, O_RDONLY | O_CLOEXEC);
  if (file < 0) return -1;
  int control = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (control < 0) {
    close(file);
    return -1;
  }
  for (int attempt = 0; attempt < 16; attempt++) {
    int n = ioctl(control, LOOP_CTL_GET_FREE);
    if (n < 0) break;
    char name[32];
    snprintf(name, sizeof(name), "/dev/loop%d", n);
    int loop = open(name, O_RDONLY | O_CLOEXEC);
    if (loop < 0) break;
    struct loop_config config;
    memset(&config, 0, sizeof(config));
    config.fd = (uint32_t)file;
    config.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
    strncpy((char *)config.info.lo_file_name, path, LO_NAME_SIZE - 1);
    if (ioctl(loop, LOOP_CONFIGURE, &config) == 0) {
      struct stat st;
      fstat(loop, &st);
      *dev = st.st_rdev;
      close(file);
      close(control);
      return loop;
    }
    int err = errno;
    close(loop);
    if (err != EBUSY) {
      errno = err;
      break;
    }
    // Someone else took that device between GET_FREE and CONFIGURE: ask again.
  }
  int err = errno;
  close(file);
  close(control);
  errno = err;
  return -1;
}

static int hex_ok(const char *s, size_t len) {
  if (strlen(s) != len) return 0;
  for (; *s; s++)
    if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f'))) return 0;
  return 1;
}

static int cmd_open(const char *name, const char *data, const char *tree, const char *blocks_arg, const char *root, const char *salt) {
  char *end;
  unsigned long long blocks = strtoull(blocks_arg, &end, 10);
  if (*end || blocks == 0) return die("DATA_BLOCKS", EINVAL);
  if (!hex_ok(root, 64)) return die("ROOT_HASH (64 hex digits)", EINVAL);
  if (strcmp(salt, "-") != 0 && (!hex_ok(salt, strlen(salt)) || strlen(salt) > 512 || strlen(salt) % 2)) return die("SALT (hex, or - for none)", EINVAL);
  if (strlen(name) >= DM_NAME_LEN) return die("NAME", ENAMETOOLONG);

  dev_t data_dev, tree_dev;
  int data_loop = attach_loop(data, &data_dev);
  if (data_loop < 0) return die(data, errno);
  int tree_loop = attach_loop(tree, &tree_dev);
  if (tree_loop < 0) return die(tree, errno);
  int control = open_control();
  if (control < 0) return die("/dev/mapper/control (is dm-mod loaded?)", errno);

  if (dm_simple(control, DM_DEV_CREATE, name, 0) != 0) return die("create the mapping", errno);

  union {
    struct dm_ioctl io;
    char bytes[BUFFER_SIZE];
  } buf;
  init_header(&buf.io, name, sizeof(buf));
  buf.io.target_count = 1;
  buf.io.flags = DM_READONLY_FLAG;
  struct dm_target_spec *spec = (struct dm_target_spec *)(buf.bytes + sizeof(struct dm_ioctl));
  spec->sector_start = 0;
  spec->length = blocks * (BLOCK_SIZE / 512);
  strncpy(spec->target_type, "verity", sizeof(spec->target_type) - 1);
  char *params = (char *)(spec + 1);
  size_t room = sizeof(buf) - sizeof(struct dm_ioctl) - sizeof(*spec);
  int n = snprintf(params, room, "1 %u:%u %u:%u %d %d %llu 0 sha256 %s %s", major(data_dev), minor(data_dev), major(tree_dev),
                   minor(tree_dev), BLOCK_SIZE, BLOCK_SIZE, blocks, root, salt);
  spec->next = (uint32_t)((sizeof(*spec) + (size_t)n + 1 + 7) & ~(size_t)7);
  int loaded = ioctl(control, DM_TABLE_LOAD, &buf.io);
  int err = errno;
  if (loaded == 0 && dm_simple(control, DM_DEV_SUSPEND, name, 0) == 0) {
    // DM_DEV_SUSPEND without the suspend flag resumes: the loaded table goes live.
    init_header(&buf.io, name, sizeof(buf));
    if (ioctl(control, DM_DEV_STATUS, &buf.io) != 0) return die("status of the mapping", errno);
    printf("/dev/dm-%u\n", minor(buf.io.dev));
    close(data_loop);
    close(tree_loop);
    return 0;
  }
  if (loaded == 0) err = errno;
  dm_simple(control, DM_DEV_REMOVE, name, 0);
  return die("load the verity table (is dm-verity loaded? do the sizes match?)", err);
}

static int cmd_status(const char *name) {
  int control = open_control();
  if (control < 0) return die("/dev/mapper/control", errno);
  union {
    struct dm_ioctl io;
    char bytes[BUFFER_SIZE];
  } buf;
  init_header(&buf.io, name, sizeof(buf));
  if (ioctl(control, DM_TABLE_STATUS, &buf.io) != 0) return die(name, errno);
  if (buf.io.target_count != 1) return die("status: not one target", EINVAL);
  struct dm_target_spec *spec = (struct dm_target_spec *)(buf.bytes + buf.io.data_start);
  const char *status = (const char *)(spec + 1);
  // verity's status starts with V (every block read so far matched) or C (one did not).
  printf("%s\n", status[0] == 'C' ? "corrupt" : "verified");
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 8 && strcmp(argv[1], "open") == 0) return cmd_open(argv[2], argv[3], argv[4], argv[5], argv[6], argv[7]);
  if (argc == 3 && strcmp(argv[1], "status") == 0) return cmd_status(argv[2]);
  if (argc == 3 && strcmp(argv[1], "remove") == 0) {
    int control = open_control();
    if (control < 0) return die("/dev/mapper/control", errno);
    return dm_simple(control, DM_DEV_REMOVE, argv[2], 0) == 0 ? 0 : die(argv[2], errno);
  }
  fprintf(stderr,
          "usage: netboot-verity open NAME DATA_FILE TREE_FILE DATA_BLOCKS ROOT_HASH SALT\n"
          "       netboot-verity status NAME\n"
          "       netboot-verity remove NAME\n");
  return 1;
}
