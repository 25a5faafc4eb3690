# VTAB-1k CIFAR-100 (natural): 100 classes; the released recipe of ./_base_.py.
_base_ = './_base_.py'

data_root = 'data/vtab-1k/cifar/'
num_classes = 100

model = dict(num_classes=num_classes)
train_dataloader = dict(dataset=dict(data_root=data_root, num_classes=num_classes))
val_dataloader = dict(dataset=dict(data_root=data_root, num_classes=num_classes))
test_dataloader = val_dataloader
