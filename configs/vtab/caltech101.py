# VTAB-1k Caltech-101 (natural): 102 classes (101 objects + background); the released recipe of ./_base_.py.
_base_ = './_base_.py'

data_root = 'data/vtab-1k/caltech101/'
num_classes = 102

model = dict(num_classes=num_classes)
train_dataloader = dict(dataset=dict(data_root=data_root, num_classes=num_classes))
val_dataloader = dict(dataset=dict(data_root=data_root, num_classes=num_classes))
test_dataloader = val_dataloader
